"""The client agent: the user's side of the keep manager protocol.

Talks HTTP+CBOR to a keep manager (untrusted), verifies the Keep's evidence, seals the one-use
channel key to the Keep, and then talks to the Keep directly over mutual TLS pinned to exactly
that key.  No cell, module or dataset is sent before :meth:`KeepSession.attest` has verified
the Keep under the user's trust policy (DESIGN.md §8, invariant 1).
"""

from __future__ import annotations

import asyncio
import http.client
import os
import socket
import ssl
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterable

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from keepbook.keep.shared import certificates, protocol, sealing
from keepbook.kernel.attestation import AttestationResult, verify_attestation
from keepbook.kernel.trust_policy import TrustPolicy

CONNECT_TIMEOUT_S = 5.0
CONTROL_TIMEOUT_S = 90.0
#: The Keep's channel: connecting (TCP + TLS) and silence between events (the Keep sends a
#: heartbeat every protocol.HEARTBEAT_S while a cell runs) — past these, the Keep is not answering.
CHANNEL_CONNECT_S = 1.5
CHANNEL_SILENCE_S = 1.5


class KeepError(Exception):
    """Something the user must hear about, in words they can act on."""


class AttestationRefused(KeepError):
    def __init__(self, result: AttestationResult):
        self.result = result
        super().__init__("attestation failed — nothing was sent to this Keep. "
                         f"Failing claim: {result.vector.first_failure()}")


# ---------------------------------------------------------------------- keep manager client


class ManagerClient:
    def __init__(self, url: str, token: str | None, *, ssl_context: ssl.SSLContext | None = None):
        self.url = url.rstrip("/")
        self.token = token
        self._ssl = ssl_context
        self._session: aiohttp.ClientSession | None = None

    async def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=CONTROL_TIMEOUT_S, sock_connect=CONNECT_TIMEOUT_S))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def call(self, method: str, path: str, body: protocol.Message | None,
                   expect: type[protocol.Message]) -> Any:
        headers = {"Accept": protocol.CBOR}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = None
        if body is not None:
            headers["Content-Type"] = protocol.CBOR
            data = body.to_cbor()
        http = await self._http()
        try:
            async with http.request(method, self.url + path, data=data, headers=headers,
                                    ssl=self._ssl if self._ssl is not None else True) as resp:
                raw = await resp.content.read(protocol.MAX_CONTROL_BYTES + 1)
                status = resp.status
        except (aiohttp.ClientConnectorError, aiohttp.ClientOSError, ConnectionError) as exc:
            raise KeepError(f"cannot reach the keep manager at {self.url}: {exc.strerror or exc}. "
                            "Is it running? (`keepbook keepmgr`, or `%keep new` without --manager "
                            "for the embedded one)") from None
        except asyncio.TimeoutError:
            raise KeepError(f"the keep manager at {self.url} did not answer {method} {path} "
                            f"within {CONTROL_TIMEOUT_S:.0f} s") from None
        except aiohttp.ClientError as exc:
            raise KeepError(f"talking to the keep manager at {self.url} failed: {exc}") from None
        if len(raw) > protocol.MAX_CONTROL_BYTES:
            raise KeepError(f"the keep manager sent an oversized answer to {method} {path}")
        if status >= 400:
            try:
                err = protocol.ErrorBody.from_cbor(raw)
                reason = err.reason
            except protocol.ProtocolError:
                reason = f"(unreadable error body, {len(raw)} bytes)"
            raise KeepError(f"keep manager refused {method} {path} ({status}): {reason}")
        try:
            return expect.from_cbor(raw)
        except protocol.ProtocolError as exc:
            raise KeepError(f"the keep manager's answer to {method} {path} breaks the protocol: "
                            f"{exc.reason}") from None

    async def contracts(self) -> protocol.Contracts:
        return await self.call("GET", "/v1/contracts", None, protocol.Contracts)

    async def create(self, req: protocol.CreateKeep) -> protocol.KeepInfo:
        return await self.call("POST", "/v1/keeps", req, protocol.KeepInfo)

    async def list(self) -> protocol.KeepList:
        return await self.call("GET", "/v1/keeps", None, protocol.KeepList)

    async def get(self, keep_id: str) -> protocol.KeepInfo:
        return await self.call("GET", f"/v1/keeps/{keep_id}", None, protocol.KeepInfo)

    async def delete(self, keep_id: str) -> protocol.KeepInfo:
        return await self.call("DELETE", f"/v1/keeps/{keep_id}", None, protocol.KeepInfo)

    async def attest(self, keep_id: str, nonce: bytes) -> protocol.AttestResponse:
        return await self.call("POST", f"/v1/keeps/{keep_id}/attest",
                               protocol.AttestRequest(nonce=nonce), protocol.AttestResponse)

    async def provision(self, keep_id: str, sealed: bytes) -> protocol.ProvisionResponse:
        return await self.call("POST", f"/v1/keeps/{keep_id}/provision",
                               protocol.ProvisionRequest(sealed=sealed), protocol.ProvisionResponse)


# ---------------------------------------------------------------------- attested channel


def not_pinned(endpoint: str, exc: Exception) -> KeepError:
    return KeepError(f"the endpoint {endpoint} did not present the pinned certificate of the "
                     f"attested Keep ({type(exc).__name__}); refusing to send anything")


class Channel:
    """HTTPS to the Keep, pinned to the one-use certificate whose key we made and sealed."""

    def __init__(self, endpoint: str, server_cert: bytes, client_key: Any, client_cert: bytes):
        self.endpoint = endpoint.rstrip("/")
        self._ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self._ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        self._ctx.check_hostname = False          # identity is the pinned certificate, not a name
        self._ctx.verify_mode = ssl.CERT_REQUIRED
        self._ctx.load_verify_locations(cadata=server_cert)  # the only certificate we trust
        with tempfile.TemporaryDirectory(prefix="keepbook-client-") as tmp:
            kp, cp = Path(tmp) / "k.pem", Path(tmp) / "c.pem"
            fd = os.open(kp, os.O_WRONLY | os.O_CREAT, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(client_key.private_bytes(serialization.Encoding.PEM,
                                                  serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
            cp.write_bytes(x509.load_der_x509_certificate(client_cert).public_bytes(serialization.Encoding.PEM))
            self._ctx.load_cert_chain(cp, kp)
        self._session: aiohttp.ClientSession | None = None

    async def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ctx, limit=8),
                timeout=aiohttp.ClientTimeout(total=None, connect=CHANNEL_CONNECT_S,
                                              sock_connect=CHANNEL_CONNECT_S))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def _post_cbor(self, path: str, body: bytes, doing: str, timeout: float | None) -> bytes:
        """POST a CBOR body on the channel; the answer's bytes, or KeepError saying what failed."""
        http = await self._http()
        try:
            async with http.post(self.endpoint + path, data=body,
                                 headers={"Content-Type": protocol.CBOR},
                                 timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
                raw = await resp.read()
                status = resp.status
        except (aiohttp.ClientConnectorCertificateError, aiohttp.ClientSSLError) as exc:
            raise not_pinned(self.endpoint, exc) from None
        except (aiohttp.ClientError, ConnectionError, asyncio.TimeoutError) as exc:
            raise KeepError(f"lost the Keep's channel during {doing}: {exc or type(exc).__name__}") from None
        if status >= 400:
            raise KeepError(f"the Keep refused {doing} ({status}): {_reason(raw)}")
        return raw

    async def request(self, op: str, args: dict | None = None, timeout: float = 30.0) -> dict:
        raw = await self._post_cbor("/v1/request", protocol.Request(op=op, args=args).to_cbor(),
                                    repr(op), timeout)
        return protocol.Reply.from_cbor(raw).content

    async def run(self, req: protocol.RunRequest) -> AsyncIterator[protocol.Event]:
        """Send one cell; yield its events as they arrive.  Always ends with a status event, or
        raises :class:`KeepError` saying the cell's fate is unknown."""
        http = await self._http()
        body = req.to_cbor()
        saw_status = False
        try:
            async with http.post(self.endpoint + "/v1/run", data=body,
                                 headers={"Content-Type": protocol.CBOR},
                                 timeout=aiohttp.ClientTimeout(total=None, connect=CHANNEL_CONNECT_S,
                                                               sock_connect=CHANNEL_CONNECT_S,
                                                               sock_read=CHANNEL_SILENCE_S)) as resp:
                if resp.status >= 400:
                    raise KeepError(f"the Keep refused the cell ({resp.status}): "
                                    f"{_reason(await resp.read())}")
                decoder = protocol.SequenceDecoder()
                async for chunk in resp.content.iter_any():
                    decoder.feed(chunk)
                    for event in decoder.events():
                        if event.kind == "heartbeat":
                            continue
                        if event.kind == "status":
                            saw_status = True
                        yield event
                if decoder.pending:
                    raise KeepError("the Keep's output stream ended in the middle of an event")
        except (aiohttp.ClientConnectorCertificateError, aiohttp.ClientSSLError) as exc:
            raise not_pinned(self.endpoint, exc) from None
        except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, aiohttp.ClientOSError,
                ConnectionError) as exc:
            raise KeepError(f"lost the connection to the Keep while the cell ran ({type(exc).__name__}); "
                            "the cell's result is unknown — the Keep may have stopped. "
                            "Use `%keep status`, or `%keep new` for a fresh Keep") from None
        except aiohttp.ClientConnectorError as exc:
            raise KeepError(f"cannot reach the Keep at {self.endpoint}: {exc.strerror or exc}; "
                            "it may have stopped — `%keep new` makes a fresh one") from None
        except protocol.ProtocolError as exc:
            raise KeepError(f"the Keep's output stream breaks the protocol: {exc.reason}") from None
        except (asyncio.TimeoutError, aiohttp.ServerTimeoutError):
            raise KeepError(f"the Keep stopped answering: no output and no heartbeat for "
                            f"{CHANNEL_SILENCE_S:.1f} s (or no connection within {CHANNEL_CONNECT_S:.1f} s); "
                            "the cell's result is unknown. `%keep status` shows what the host "
                            "knows; `%keep new` makes a fresh Keep") from None
        if not saw_status:
            raise KeepError("the Keep's output stream ended before the cell finished; "
                            "the cell's result is unknown")


    async def upload(self, body: Iterable[Any], name: str | None = None,
                     progress: Callable[[int], None] | None = None) -> dict:
        """Stream a sealed dataset to the Keep (``POST /v1/upload``); the Keep's receipt.

        ``body`` is a plain iterator of buffers (each may be reused once the next is asked
        for), sent from a worker thread over a blocking TLS socket with this channel's pinned
        context: asyncio's TLS layer (MemoryBIO copies, one loop wake-up per write) cost more
        than the sealing itself.  ``progress(bytes_sent)`` runs on the event loop."""
        loop = asyncio.get_running_loop()
        report = None if progress is None else (lambda n: loop.call_soon_threadsafe(progress, n))
        conn = _UploadConnection(self.endpoint, self._ctx)
        try:
            status, raw = await asyncio.to_thread(conn.post, "/v1/upload" + (f"?name={name}" if name else ""),
                                                  body, report)
        except asyncio.CancelledError:
            conn.abort()  # the worker's next send fails at once
            raise
        if status >= 400:
            raise KeepError(f"the Keep refused the dataset ({status}): {_reason(raw)}")
        return protocol.Reply.from_cbor(raw).content

    async def audit(self) -> protocol.AuditExport:
        raw = await self._post_cbor("/v1/audit", b"", "the audit log export", CONTROL_TIMEOUT_S)
        try:
            return protocol.AuditExport.from_cbor(raw)  # type: ignore[return-value]
        except protocol.ProtocolError as exc:
            raise KeepError(f"the Keep's audit export breaks the protocol: {exc.reason}") from None


class _UploadConnection:
    """One HTTP/1.1 POST with a chunked body over a blocking TLS socket (``http.client`` does
    the request line, headers and response parsing; the chunk framing is written here so that a
    sealed frame goes out in one ``sendall`` without being copied into a bigger bytes)."""

    TIMEOUT_S = 120.0  # per socket operation: a Keep silent this long has lost the upload

    def __init__(self, endpoint: str, ctx: ssl.SSLContext):
        import urllib.parse

        u = urllib.parse.urlsplit(endpoint)
        self.endpoint, self.host, self.port, self.ctx = endpoint, u.hostname or "", u.port or 443, ctx
        self.conn: http.client.HTTPSConnection | None = None

    def abort(self) -> None:
        sock = self.conn.sock if self.conn is not None else None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def post(self, path: str, body: Iterable[Any], report: Callable[[int], Any] | None) -> tuple[int, bytes]:
        self.conn = conn = http.client.HTTPSConnection(self.host, self.port, context=self.ctx,
                                                       timeout=CHANNEL_CONNECT_S)
        try:
            try:
                conn.connect()  # TLS handshake: the pinned certificate, our client certificate
            except ssl.SSLError as exc:
                raise not_pinned(self.endpoint, exc) from None
            assert conn.sock is not None
            conn.sock.settimeout(self.TIMEOUT_S)
            conn.putrequest("POST", path, skip_accept_encoding=True)
            conn.putheader("Content-Type", "application/octet-stream")
            conn.putheader("Transfer-Encoding", "chunked")
            conn.putheader("Connection", "close")
            conn.endheaders()
            sent, sock = 0, conn.sock
            for piece in body:  # errors of the body itself (reading, sealing) propagate as they are
                n = len(piece)
                if n and not _send_all(sock, (b"%x\r\n" % n, piece, b"\r\n")):
                    break  # the Keep answered (refused) and closed: its answer says why
                sent += n
                if report is not None:
                    report(sent)
            else:
                _send_all(sock, (b"0\r\n\r\n",))
            try:
                resp = conn.getresponse()
                return resp.status, resp.read()
            except (OSError, http.client.HTTPException) as exc:
                raise KeepError(f"lost the Keep's channel during the upload: "
                                f"{exc or type(exc).__name__}") from None
        except OSError as exc:
            if isinstance(exc, ssl.SSLError) or conn.sock is None:
                raise KeepError(f"lost the Keep's channel during the upload: "
                                f"{exc or type(exc).__name__}") from None
            raise
        finally:
            conn.close()


def _send_all(sock: Any, parts: tuple[Any, ...]) -> bool:
    """Send each part whole (a 4 MiB frame goes out without being joined to its framing)."""
    try:
        for part in parts:
            sock.sendall(part)
        return True
    except OSError:
        return False


def _reason(raw: bytes) -> str:
    try:
        return protocol.ErrorBody.from_cbor(raw).reason
    except protocol.ProtocolError:
        return f"(unreadable error body, {len(raw)} bytes)"


# ---------------------------------------------------------------------- one Keep, client's view


@dataclass
class KeepSession:
    manager: ManagerClient
    requested: protocol.CreateKeep
    info: protocol.KeepInfo
    policy: TrustPolicy
    attestation: AttestationResult | None = None
    channel: Channel | None = None
    cells_run: int = 0
    bytes_in: int = 0
    created_at: float = field(default_factory=lambda: __import__("time").time())

    @property
    def id(self) -> str:
        return self.info.id

    async def attest(self) -> AttestationResult:
        """Fresh evidence with a fresh nonce, verified.  Raises :class:`AttestationRefused`."""
        nonce = os.urandom(32)
        resp = await self.manager.attest(self.id, nonce)
        result = verify_attestation(resp, nonce=nonce, requested=self.requested, policy=self.policy)
        self.attestation = result
        if not result.ok:
            raise AttestationRefused(result)
        return result

    async def ensure_channel(self) -> Channel:
        """Attest (if not yet verified) and provision the one-use channel."""
        if self.channel is not None:
            return self.channel
        if self.attestation is None or not self.attestation.ok:
            await self.attest()
        att = self.attestation
        assert att is not None and att.ok and att.report_data is not None
        tls_key = ec.generate_private_key(ec.SECP256R1())
        client_key = ec.generate_private_key(ec.SECP256R1())
        client_cert = certificates.self_signed(client_key, f"keepbook client {uuid.uuid4().hex[:8]}")
        plaintext = protocol.Sealed(
            tls_key=tls_key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()),
            client_cert=client_cert).to_cbor()
        sealed = sealing.seal(att.response.hpke_suite, att.response.hpke_public_key, plaintext,
                              protocol.provision_info(att.report_data))
        resp = await self.manager.provision(self.id, sealed)
        try:
            got = certificates.spki(resp.server_cert)
        except ValueError:
            raise KeepError("the endpoint certificate the host relayed does not parse; "
                            "refusing to connect") from None
        if got != certificates.key_spki(tls_key):
            raise KeepError("the endpoint certificate does not carry the key sealed to the Keep — "
                            "the host substituted its own; refusing to connect")
        self.channel = Channel(resp.endpoint, resp.server_cert, client_key, client_cert)
        return self.channel

    async def run(self, req: protocol.RunRequest) -> AsyncIterator[protocol.Event]:
        channel = await self.ensure_channel()
        self.cells_run += 1
        async for event in channel.run(req):
            yield event

    async def close(self) -> None:
        if self.channel is not None:
            try:
                await self.channel.request("close", timeout=2.0)
            except KeepError:
                pass
            await self.channel.close()
            self.channel = None
        try:
            await self.manager.delete(self.id)
        except KeepError:
            pass
