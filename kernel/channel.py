"""The attested channel: the one transport between the client and its Keep.

Every request on the channel — a cell, completion, inspection, interrupt, status, upload, the
audit log, close — goes through :class:`Channel`, which speaks only TLS 1.3 to the exact key the
client made and sealed to the Keep.  The host relays the endpoint, so nothing about it is
trusted until checked:

* the endpoint must be ``https://HOST:PORT`` with nothing else in it (no user, path, query or
  fragment) — an ``http://`` endpoint would send the cell in clear, so it is refused before a
  single byte leaves (:class:`Endpoint`);
* the TLS context trusts exactly one certificate, the one carrying the sealed key, and presents
  the client certificate that went in the same sealed message; after every handshake the peer's
  certificate is compared with the pinned one, byte for byte;
* redirects are never followed (a 3xx is an error), proxies from the environment are never used.

Runs on the user's machine; holds the channel's client key.
"""

from __future__ import annotations

import asyncio
import http.client
import ipaddress
import os
import re
import socket
import ssl
import tempfile
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterable

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from keepbook.keep.shared import protocol

#: Connecting (TCP + TLS) and silence between events (the Keep sends a heartbeat every
#: protocol.HEARTBEAT_S while a cell runs) — past these, the Keep is not answering.
CHANNEL_CONNECT_S = 1.5
CHANNEL_SILENCE_S = 1.5
CONTROL_TIMEOUT_S = 90.0
_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                       r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")


class KeepError(Exception):
    """Something the user must hear about, in words they can act on."""


class ChannelRefused(KeepError):
    """The channel's endpoint or peer failed a check: nothing was sent."""


@dataclass(frozen=True)
class Endpoint:
    """Where the host says the Keep listens: only a host and a port, reached over TLS."""

    host: str
    port: int

    @classmethod
    def parse(cls, url: str) -> "Endpoint":
        """The endpoint in ``url``, or :class:`ChannelRefused` naming the failed check."""
        def refuse(why: str) -> ChannelRefused:
            return ChannelRefused(f"endpoint: the host gave {url[:200]!r} as the Keep's address — "
                                  f"{why}; nothing was sent to it")
        if not isinstance(url, str) or len(url) > 512:
            raise refuse("not a short URL")
        try:
            u = urllib.parse.urlsplit(url)
            port = u.port
        except ValueError as exc:
            raise refuse(f"it does not parse ({exc})") from None
        if u.scheme != "https":
            raise refuse(f"the attested channel speaks only https, not {u.scheme or 'no scheme'!r}")
        if u.username is not None or u.password is not None:
            raise refuse("it carries a user name or password")
        if u.path not in ("", "/") or u.query or u.fragment:
            raise refuse("it carries a path, query or fragment")
        host = u.hostname or ""
        if not _valid_host(host):
            raise refuse(f"{host!r} is not a host name or IP address")
        if port is None:
            port = 443
        if not 0 < port < 65536:
            raise refuse(f"port {port} is out of range")
        return cls(host, port)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.port}"


def _valid_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return bool(_HOSTNAME.match(host))


def pinned_context(server_cert: bytes, client_key: Any, client_cert: bytes) -> ssl.SSLContext:
    """TLS 1.3, trusting exactly ``server_cert``, presenting the client certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False          # identity is the pinned certificate, not a name
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=server_cert)  # the only certificate we trust
    with tempfile.TemporaryDirectory(prefix="keepbook-client-") as tmp:
        kp, cp = Path(tmp) / "k.pem", Path(tmp) / "c.pem"
        fd = os.open(kp, os.O_WRONLY | os.O_CREAT, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(client_key.private_bytes(serialization.Encoding.PEM,
                                              serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))
        cp.write_bytes(x509.load_der_x509_certificate(client_cert).public_bytes(
            serialization.Encoding.PEM))
        ctx.load_cert_chain(cp, kp)
    return ctx


def not_pinned(endpoint: str, exc: BaseException | str) -> ChannelRefused:
    why = exc if isinstance(exc, str) else type(exc).__name__
    return ChannelRefused(f"pinning: the endpoint {endpoint} did not present the pinned "
                          f"certificate of the attested Keep ({why}); refusing to send anything")


def reason_of(raw: bytes) -> str:
    try:
        return protocol.ErrorBody.from_cbor(raw).reason
    except protocol.ProtocolError:
        return f"(unreadable error body, {len(raw)} bytes)"


class _PinnedConnector(aiohttp.TCPConnector):
    """A connector whose every TLS connection is checked, right after its handshake and before
    any request byte is written, to present exactly the pinned certificate."""

    def __init__(self, pinned: bytes, url: str, **kwargs: Any):
        super().__init__(**kwargs)
        self._pinned, self._url = pinned, url

    async def _wrap_create_connection(self, *args: Any, **kwargs: Any) -> Any:
        transport, proto = await super()._wrap_create_connection(*args, **kwargs)
        ssl_object = transport.get_extra_info("ssl_object")
        peer = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if peer != self._pinned:
            transport.close()
            raise not_pinned(self._url, "another certificate" if peer else "no TLS")
        return transport, proto


class Channel:
    """HTTPS to one Keep, pinned to the one-use certificate whose key the client made."""

    def __init__(self, endpoint: Endpoint, server_cert: bytes, client_key: Any, client_cert: bytes):
        self.endpoint = endpoint
        self.pinned = bytes(server_cert)
        self.context = pinned_context(server_cert, client_key, client_cert)
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return self.endpoint.url

    async def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=_PinnedConnector(self.pinned, self.url, ssl=self.context, limit=8),
                trust_env=False,  # never an HTTP proxy from the environment
                timeout=aiohttp.ClientTimeout(total=None, connect=CHANNEL_CONNECT_S,
                                              sock_connect=CHANNEL_CONNECT_S))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def _no_redirect(self, resp: aiohttp.ClientResponse) -> None:
        """The answer is not a redirect (never followed: it would leave the attested channel).
        The peer's certificate was checked when the connection was made (_PinnedConnector)."""
        if 300 <= resp.status < 400:
            raise ChannelRefused(f"redirect: the Keep's endpoint answered {resp.status} "
                                 f"{resp.headers.get('Location', '')!r}; the attested channel "
                                 "never follows redirects")

    async def post(self, path: str, body: bytes, doing: str, timeout: float | None) -> bytes:
        """POST a CBOR body; the answer's bytes, or KeepError saying what failed."""
        http = await self._http()
        try:
            async with http.post(self.url + path, data=body, allow_redirects=False,
                                 headers={"Content-Type": protocol.CBOR},
                                 timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
                self._no_redirect(resp)
                raw = await resp.read()
                status = resp.status
        except (aiohttp.ClientConnectorCertificateError, aiohttp.ClientSSLError) as exc:
            raise not_pinned(self.url, exc) from None
        except (aiohttp.ClientError, ConnectionError, asyncio.TimeoutError) as exc:
            raise KeepError(f"lost the Keep's channel during {doing}: {exc or type(exc).__name__}") from None
        if status >= 400:
            raise KeepError(f"the Keep refused {doing} ({status}): {reason_of(raw)}")
        return raw

    async def request(self, op: str, args: dict | None = None, timeout: float = 30.0) -> dict:
        raw = await self.post("/v1/request", protocol.Request(op=op, args=args).to_cbor(),
                              repr(op), timeout)
        try:
            return protocol.Reply.from_cbor(raw).content
        except protocol.ProtocolError as exc:
            raise KeepError(f"the Keep's answer to {op!r} breaks the protocol: {exc.reason}") from None

    async def run(self, req: protocol.RunRequest) -> AsyncIterator[protocol.Event]:
        """Send one cell; yield its events as they arrive.  Always ends with a status event, or
        raises :class:`KeepError` saying the cell's fate is unknown."""
        http = await self._http()
        body = req.to_cbor()
        saw_status = False
        try:
            async with http.post(self.url + "/v1/run", data=body, allow_redirects=False,
                                 headers={"Content-Type": protocol.CBOR},
                                 timeout=aiohttp.ClientTimeout(total=None, connect=CHANNEL_CONNECT_S,
                                                               sock_connect=CHANNEL_CONNECT_S,
                                                               sock_read=CHANNEL_SILENCE_S)) as resp:
                self._no_redirect(resp)
                if resp.status >= 400:
                    raise KeepError(f"the Keep refused the cell ({resp.status}): "
                                    f"{reason_of(await resp.read())}")
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
            raise not_pinned(self.url, exc) from None
        except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, aiohttp.ClientOSError,
                ConnectionError) as exc:
            raise KeepError(f"lost the connection to the Keep while the cell ran ({type(exc).__name__}); "
                            "the cell's result is unknown — the Keep may have stopped. "
                            "Use `%keep status`, or `%keep new` for a fresh Keep") from None
        except aiohttp.ClientConnectorError as exc:
            raise KeepError(f"cannot reach the Keep at {self.url}: {exc.strerror or exc}; "
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
        conn = _UploadConnection(self)
        query = "?" + urllib.parse.urlencode({"name": name}) if name else ""
        try:
            status, raw = await asyncio.to_thread(conn.post, "/v1/upload" + query, body, report)
        except asyncio.CancelledError:
            conn.abort()  # the worker's next send fails at once
            raise
        if status >= 400:
            raise KeepError(f"the Keep refused the dataset ({status}): {reason_of(raw)}")
        return protocol.Reply.from_cbor(raw).content

    async def audit(self, page_bytes: int | None = None) -> protocol.AuditExport:
        """The whole audit log, page by page (of at most ``page_bytes``, if given), up to the
        head the first page signed."""
        first = await self._audit_page(0, page_bytes)
        want = first.head.get("count")
        if not isinstance(want, int) or want < 0:
            raise KeepError("the Keep's audit export breaks the protocol: the head has no count")
        pages, have = [first.entries], len(_entries(first))
        while have < want:
            page = await self._audit_page(have, page_bytes)
            items = _entries(page)
            if (page.start or 0) != have or not items:
                raise KeepError(f"the Keep's audit export breaks the protocol: asked for entries "
                                f"from {have}, got {len(items)} from {page.start}")
            take = items[:want - have]
            pages.append(b"".join(raw for raw, _ in take))
            have += len(take)
        return protocol.AuditExport(entries=b"".join(pages), head=first.head,
                                    signature=first.signature, start=0)

    async def _audit_page(self, start: int, page_bytes: int | None) -> protocol.AuditExport:
        raw = await self.post("/v1/audit", protocol.AuditRequest(start=start, max_bytes=page_bytes).to_cbor(),
                              "the audit log export", CONTROL_TIMEOUT_S)
        try:
            return protocol.AuditExport.from_cbor(raw)  # type: ignore[return-value]
        except protocol.ProtocolError as exc:
            raise KeepError(f"the Keep's audit export breaks the protocol: {exc.reason}") from None


def _entries(page: protocol.AuditExport) -> list[tuple[bytes, Any]]:
    try:
        return protocol.decode_sequence(page.entries, what="audit entry")
    except protocol.ProtocolError as exc:
        raise KeepError(f"the Keep's audit export breaks the protocol: {exc.reason}") from None


class _UploadConnection:
    """One HTTP/1.1 POST with a chunked body over a blocking TLS socket (``http.client`` does
    the request line, headers and response parsing, and follows no redirect; the chunk framing
    is written here so that a sealed frame goes out in one ``sendall`` without being copied into
    a bigger bytes).  The peer's certificate is checked against the pinned one before the first
    byte of the body leaves."""

    TIMEOUT_S = 120.0  # per socket operation: a Keep silent this long has lost the upload

    def __init__(self, channel: Channel):
        self.channel = channel
        self.conn: http.client.HTTPSConnection | None = None

    def abort(self) -> None:
        sock = self.conn.sock if self.conn is not None else None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def post(self, path: str, body: Iterable[Any], report: Callable[[int], Any] | None) -> tuple[int, bytes]:
        ch = self.channel
        self.conn = conn = http.client.HTTPSConnection(ch.endpoint.host, ch.endpoint.port,
                                                       context=ch.context, timeout=CHANNEL_CONNECT_S)
        try:
            try:
                conn.connect()  # TLS handshake: the pinned certificate, our client certificate
            except ssl.SSLError as exc:
                raise not_pinned(ch.url, exc) from None
            assert conn.sock is not None
            if conn.sock.getpeercert(binary_form=True) != ch.pinned:
                raise not_pinned(ch.url, "another certificate")
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
                if 300 <= resp.status < 400:
                    raise ChannelRefused(f"redirect: the Keep's endpoint answered {resp.status} to "
                                         "the upload; the attested channel never follows redirects")
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
