"""wasmldr: the agent inside the Keep.

Talks to its keepldr over a framed pipe (stdin/stdout) for start, attest and provision; after
provisioning, serves the attested channel: HTTPS with mutual TLS on the one-use key the client
sealed to this Keep, requiring the client certificate that came in the same sealed message.

Nothing this process knows about cells reaches the host: file descriptors 1 and 2 are pointed
at /dev/null before anything else runs (the control pipe uses a private duplicate of fd 1), and
only lifecycle events — plus, in the ``debug`` profile, debug log lines — go to keepldr.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import os
import shutil
import ssl
import sys
import tempfile
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from keepbook.keep.shared.cbor_http import cbor_response, error_middleware, error_response, read_message
from keepbook.keep.inside import audit_log
from keepbook.keep.inside import dataset_opener
from keepbook.keep.shared import dataset_format
from keepbook.keep.shared.audit_format import PAGE_BYTES
from keepbook.keep.shared import connection_guard, measurement, protocol
from keepbook.keep.shared.framing import FrameReader, write_frame
from keepbook.keep.shared.handshake import Handshake, Role
from keepbook.keep.shared.policy import OutputPolicy, PolicyError
from keepbook.keep.inside import vm_guest
from keepbook.keep.inside.cells import AUDIT_FULL, AuditFull, Busy, Cells
from keepbook.keep.inside.storage import Storage, StorageFull
from keepbook.keep.inside.identity import KeepIdentity, KeepKeys
from keepbook.keep.inside.review import ReviewQueue

LISTEN_HOST = os.environ.get("KEEPBOOK_KEEP_LISTEN", "127.0.0.1")
#: 0 = any free port (a process Keep); a VM Keep listens on the port its host forwards
LISTEN_PORT = int(os.environ.get("KEEPBOOK_KEEP_PORT", "0"))
UPLOAD_BATCH = 4 << 20  # bytes of a sealed upload handed to the opening thread at once


def isolate_stdio() -> tuple[int, int]:
    """Return (control_in, control_out) fds and silence fd 1 and 2 for everything else."""
    ctrl_out = os.dup(1)
    ctrl_in = os.dup(0)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    sys.stdout = open(os.devnull, "w")
    sys.stderr = open(os.devnull, "w")
    return ctrl_in, ctrl_out


class Wasmldr:
    def __init__(self, backend: str, writer: asyncio.StreamWriter):
        self.backend = backend
        self.writer = writer
        self.handshake = Handshake(Role.KEEP)
        self.identity: KeepIdentity | None = None
        self.cells: Cells | None = None
        self.runner: web.AppRunner | None = None
        self.server: asyncio.AbstractServer | None = None
        self.guard: connection_guard.ConnectionGuard | None = None
        self.client_spki: bytes | None = None
        self.closed = asyncio.Event()
        self.keys: KeepKeys | None = None
        self.audit: audit_log.AuditLog | None = None
        self.data_root: str | None = None
        self.storage: Storage | None = None
        self._upload_lock = asyncio.Lock()

    # ------------------------------------------------------------------ control pipe
    def send(self, msg: protocol.Message) -> None:
        write_frame(self.writer, msg)

    def lifecycle(self, event: str, detail: str | None = None) -> None:
        self.send(protocol.Lifecycle(event=event, detail=detail))

    def debug_log(self, text: str) -> None:
        """Only reachable in the debug profile (Cells only calls it then)."""
        self.send(protocol.DebugLog(text=text[:4096]))

    async def handle(self, msg: protocol.Message) -> protocol.Message:
        """One request from the control pipe → its answer.  The handshake state machine decides
        whether the request is allowed now (start once, attest after start, provision once,
        after an attestation) and learns the answer, an error included."""
        if isinstance(msg, protocol.OwnerRequest):
            return await self.owner_request(msg)
        if not isinstance(msg, (protocol.Start, protocol.AttestRequest, protocol.ProvisionRequest)):
            raise protocol.RemoteProtocolError(f"wasmldr does not accept {msg.MSG!r} on its "
                                               "control pipe")
        self.handshake.receive(msg)
        try:
            if isinstance(msg, protocol.Start):
                reply: protocol.Message = self.start(msg)
            elif isinstance(msg, protocol.AttestRequest):
                assert self.identity is not None
                # evidence generation may take a while (first use of simulated roots)
                reply = await asyncio.to_thread(self.identity.attest, msg)
            else:
                reply = await self.provision(msg)
        except protocol.ProtocolError as exc:
            reply = protocol.ErrorBody.of(exc.status, exc.reason)
        except Exception as exc:
            reply = protocol.ErrorBody(status=500, reason=f"Keep internal error ({type(exc).__name__})")
        self.handshake.send(reply)
        return reply

    async def owner_request(self, msg: protocol.OwnerRequest) -> protocol.Message:
        """A data owner's sealed review request (relayed by the host, which cannot read it);
        no handshake move.  Refusals it cannot seal a reply for are plain errors."""
        try:
            self.handshake.require_owner_channel()
            assert self.cells is not None
            return await asyncio.to_thread(self.cells.reviews.owner_request, msg)
        except protocol.ProtocolError as exc:
            return protocol.ErrorBody(status=exc.status, reason=exc.reason)
        except Exception as exc:
            return protocol.ErrorBody(status=500, reason=f"Keep internal error ({type(exc).__name__})")

    def start(self, msg: protocol.Start) -> protocol.Message:
        requested = protocol.loads(msg.config, max_bytes=protocol.MAX_CONTROL_BYTES)
        if not isinstance(requested, dict):
            raise protocol.ProtocolError("start.config must be a map")
        backend = requested.get("backend")
        if backend != self.backend:
            raise protocol.ProtocolError(f"start asks for backend {backend!r} but this Keep "
                                         f"is {self.backend!r}")
        # Long-lived keys made here, in the Keep; their public halves go into the attested
        # config, so the evidence vouches for them (dataset sealing, audit signatures).
        self.keys = KeepKeys.generate()
        config = protocol.KeepConfig(
            backend=self.backend, profile=requested.get("profile"), limits=requested.get("limits"),
            policy=requested.get("policy", b""),
            runtime={**measurement.runtime_versions(), **vm_guest.runtime_facts(self.backend)},
            keys=self.keys.public(), keep_id=msg.keep_id)
        config.validate()
        try:
            policy = OutputPolicy.parse(config.policy, config.profile, "the Keep's output policy")
        except PolicyError as exc:
            raise protocol.ProtocolError(f"start: {exc}") from None
        self.identity = KeepIdentity(msg.keep_id, config)
        self.audit = audit_log.AuditLog(msg.keep_id, config.digest(), self.keys.audit)
        self.audit.append("start", {"profile": config.profile, "backend": config.backend,
                                    "policy_digest": policy.digest(), "policy_source": policy.source})
        if self.data_root is None:  # a pooled Keep made it before it booted (prewarm)
            self.make_data_root()
        assert self.data_root is not None
        self.storage = Storage([_SCRATCH or "", self.data_root], config.limits["memory_bytes"])
        reviews = ReviewQueue(msg.keep_id, config.digest(), self.keys.dataset, self.keys.audit.sign,
                              self.audit.append)
        self.cells = Cells(config, debug_log=self.debug_log,
                           data_dir=os.path.join(self.data_root, "data"),
                           audit=self.audit.append, policy=policy, storage=self.storage,
                           reviews=reviews)
        return protocol.Reply(ok=True, content={"profile": config.profile})

    def make_data_root(self) -> str:
        """The Keep's private folder for datasets (data/, staging/); its /data folder's path."""
        self.data_root = _private_dir()
        os.makedirs(os.path.join(self.data_root, "data"), mode=0o700)
        os.makedirs(os.path.join(self.data_root, "staging"), mode=0o700)
        # datasets sealed with [data] access = "queries": no cell can open this directory
        os.makedirs(os.path.join(self.data_root, "trusted"), mode=0o700)
        return os.path.join(self.data_root, "data")

    async def provision(self, msg: protocol.ProvisionRequest) -> protocol.ProvisionResponse:
        assert self.identity is not None
        sealed, key, cert_der = self.identity.open_provision(msg)
        client_cert = x509.load_der_x509_certificate(sealed.client_cert)
        self.client_spki = client_cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        ctx = server_ssl_context(key, cert_der, sealed.client_cert)
        app = web.Application(client_max_size=protocol.MAX_MESSAGE_BYTES,
                              middlewares=[error_middleware(protocol.MAX_MESSAGE_BYTES, _internal), self._pinned_client])
        app.router.add_post("/v1/run", self.run)
        app.router.add_post("/v1/request", self.request)
        app.router.add_post("/v1/upload", self.upload)
        app.router.add_post("/v1/audit", self.audit_export)
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self.runner.setup()
        # TLS is started by the guard on each accepted connection, so a connection that never
        # completes its handshake is counted and closed (keep/shared/connection_guard.py)
        self.server, self.guard, port = await connection_guard.serve(
            self.runner, LISTEN_HOST, LISTEN_PORT, ssl_context=ctx)
        self.lifecycle("channel-open")
        return protocol.ProvisionResponse(endpoint=f"https://{LISTEN_HOST}:{port}",
                                          server_cert=cert_der)

    # ------------------------------------------------------------------ attested channel
    @web.middleware
    async def _pinned_client(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """TLS already required the sealed client certificate; check its key once more."""
        ssl_obj = request.transport.get_extra_info("ssl_object") if request.transport else None
        der = ssl_obj.getpeercert(binary_form=True) if ssl_obj else None
        if not der or self.client_spki is None:
            return error_response(403, "client certificate required")
        spki = x509.load_der_x509_certificate(der).public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        if not hmac.compare_digest(spki, self.client_spki):
            return error_response(403, "client certificate is not the one sealed to this Keep")
        return await handler(request)

    async def _body(self, request: web.Request, cls: type[protocol.Message]) -> Any:
        return await read_message(request, cls)

    async def run(self, request: web.Request) -> web.StreamResponse:
        req: protocol.RunRequest = await self._body(request, protocol.RunRequest)
        assert self.cells is not None
        events = self.cells.run(req)
        queue: asyncio.Queue = asyncio.Queue()

        async def pump() -> None:
            try:
                async for data in events:
                    await queue.put(data)
                await queue.put(None)
            except Exception as exc:  # Busy, or a failure to report
                await queue.put(exc)

        pumping = asyncio.create_task(pump())
        await asyncio.sleep(0)  # a busy Keep says so before any response starts
        if not queue.empty() and isinstance(queue._queue[0], (Busy, AuditFull)):  # type: ignore[attr-defined]
            raise protocol.ProtocolError(str(queue.get_nowait()), 409)
        resp = web.StreamResponse(status=200, headers={"Content-Type": protocol.CBOR_SEQ})
        await resp.prepare(request)
        heartbeat = protocol.Event(kind="heartbeat", content={}).to_cbor()
        try:
            while True:
                try:
                    item = await asyncio.wait_for(queue.get(), protocol.HEARTBEAT_S)
                except asyncio.TimeoutError:
                    await resp.write(heartbeat)  # silent cell: tell the client we are alive
                    continue
                if item is None:
                    break
                if isinstance(item, Busy):
                    await resp.write(protocol.Event(kind="status", content={
                        "ok": False, "reason": str(item)}).to_cbor())
                    break
                if isinstance(item, Exception):
                    raise item
                await resp.write(item)
        except (ConnectionError, asyncio.CancelledError):
            # the client went away: stop the cell rather than run it for nobody
            self.cells.interrupt()
            pumping.cancel()
            raise
        await resp.write_eof()
        return resp

    async def request(self, request: web.Request) -> web.Response:
        req: protocol.Request = await self._body(request, protocol.Request)
        assert self.cells is not None
        if req.op == "close":
            asyncio.get_running_loop().call_later(0.05, self.closed.set)
            return cbor_response(protocol.Reply(ok=True, content={"closing": True}))
        content = await asyncio.to_thread(self.cells.request, req.op, req.args or {})
        return cbor_response(protocol.Reply(ok=True, content=content))


    async def audit_export(self, request: web.Request) -> web.Response:
        """One page of the audit log (an empty body: the first)."""
        assert self.audit is not None
        body = await connection_guard.read_body(request, protocol.MAX_CONTROL_BYTES)
        ask = protocol.AuditRequest()
        if body:
            if request.headers.get("Content-Type", "").split(";")[0].strip() != protocol.CBOR:
                raise protocol.ProtocolError(f"wrong content type: send {protocol.CBOR}", 415)
            ask = protocol.AuditRequest.from_cbor(body)  # type: ignore[assignment]
        exp = self.audit.export(ask.start, min(ask.max_bytes or PAGE_BYTES, PAGE_BYTES))
        return cbor_response(protocol.AuditExport(entries=exp["entries"], head=exp["head"],
                                                  signature=exp["signature"], start=exp["start"]))

    async def upload(self, request: web.Request) -> web.Response:
        """A sealed dataset, streamed: decrypted chunk by chunk into a private staging file,
        moved to /data/NAME only once every chunk and the owner's signature verified."""
        assert self.cells is not None and self.keys is not None and self.data_root is not None
        ctype = request.headers.get("Content-Type", "").split(";")[0].strip()
        if ctype != "application/octet-stream":
            raise protocol.ProtocolError(f"wrong content type {ctype or '(none)'!r}: send the sealed "
                                         "dataset as application/octet-stream", 415)
        if self.audit is not None and self.audit.full:
            raise protocol.ProtocolError(AUDIT_FULL + "; it takes no more datasets", 409)
        alias = request.query.get("name") or None
        if alias is not None:
            try:
                dataset_format.check_name(alias)
            except dataset_format.DatasetError as exc:
                raise protocol.ProtocolError(str(exc)) from None
        async with self._upload_lock:
            fd, staging = tempfile.mkstemp(dir=os.path.join(self.data_root, "staging"))
            try:
                try:
                    info = await self._receive(request, fd)
                finally:
                    os.close(fd)
                name = alias or info.name
                dataset_policy = OutputPolicy.parse(info.policy, self.cells.config.profile,
                                                    f"the owner's policy of {name}")
                place = "trusted" if dataset_policy.data_access == "queries" else "data"
                final = os.path.join(self.data_root, place, *name.split("/"))
                taken = _taken(self.data_root, name)
                if taken or name in self.cells.trusted.datasets:
                    raise dataset_format.DatasetError(f"/data/{taken or name} exists already: "
                                                      "upload it --as another name")
                self._admit(info, dataset_policy)
                os.chmod(staging, 0o400)
                os.makedirs(os.path.dirname(final), mode=0o700, exist_ok=True)  # %upload DIR
                os.rename(staging, final)
            except (dataset_format.DatasetError, PolicyError, StorageFull) as exc:
                self.audit.append("upload-refused", {"reason": str(exc)[:512]})  # type: ignore[union-attr]
                raise protocol.ProtocolError(f"sealed dataset refused: {exc}; nothing was "
                                             "exposed under /data") from None
            finally:
                if os.path.exists(staging):
                    os.unlink(staging)
        entry = {"name": name, "bytes": info.bytes, "digest": info.digest, "owner": info.owner,
                 "policy_digest": dataset_policy.digest(), "suite": info.suite,
                 "access": dataset_policy.data_access}
        if not self.audit.append("dataset", entry):  # type: ignore[union-attr]
            os.chmod(final, 0o600)
            os.unlink(final)  # nothing is opened that the log cannot record
            raise protocol.ProtocolError(AUDIT_FULL + "; the dataset was not opened", 409)
        self.cells.enforcer.tighten(dataset_policy)
        self.cells.trusted.add(name, final, info.digest, info.owner, dataset_policy)
        path = f"/data/{name}" if place == "data" else f"(trusted queries only: {name})"
        return cbor_response(protocol.Reply(ok=True, content={
            **entry, "path": path, "policy": self.cells.enforcer.policy.summary()}))

    async def _receive(self, request: web.Request, fd: int) -> dataset_format.DatasetInfo:
        """Read the body as it arrives (no re-chunking copies) and hand it over in batches of
        UPLOAD_BATCH bytes to a worker thread that opens, hashes and writes it while the loop
        reads the next batch: one thread hand-off per batch, at most two batches in flight."""
        opener = dataset_opener.Opener(self.keys.dataset if self.keys else {})

        def write(view: memoryview) -> None:
            while view:
                view = view[os.write(fd, view):]

        def consume(batch: list[bytes]) -> None:
            for piece in batch:
                opener.feed(piece, write)

        pending: asyncio.Future | None = None
        batch: list[bytes] = []
        size = 0
        try:
            while True:
                piece = await connection_guard.read_piece(request)
                if piece:
                    batch.append(piece)
                    size += len(piece)
                if size >= UPLOAD_BATCH or (not piece and batch):
                    if pending is not None:
                        await pending
                    if self.storage is not None:  # staged plaintext counts against the Keep's limit
                        await asyncio.to_thread(self.storage.reserve, size)
                    pending = asyncio.ensure_future(asyncio.to_thread(consume, batch))
                    batch, size = [], 0
                if not piece:
                    break
            if pending is not None:
                await pending
        finally:  # never leave the worker writing to fd after the caller closed it
            if pending is not None and not pending.done():
                await asyncio.wait([pending])
        return opener.finish()

    def _admit(self, info: dataset_format.DatasetInfo, policy: OutputPolicy) -> None:
        """The owner's rules for where their data may be opened."""
        assert self.cells is not None
        profile = self.cells.config.profile
        if profile not in policy.data_profiles:
            raise dataset_format.DatasetError(
                f"the owner's policy allows this data only in profile(s) "
                f"{', '.join(policy.data_profiles)}; this Keep runs {profile}")
        owners = self.cells.enforcer.policy.data_owners
        if owners and info.owner not in owners:
            raise dataset_format.DatasetError(f"owner {info.owner} is not one of the owners this "
                                        "Keep's policy accepts (data.owners)")


def _taken(root: str, name: str) -> str | None:
    """The name (or a folder of it) a dataset already has, in /data or among the datasets only
    trusted queries read: one namespace for both, so no dataset shadows another."""
    parts = name.split("/")
    for where in ("data", "trusted"):
        for i in range(1, len(parts) + 1):
            path = os.path.join(root, where, *parts[:i])
            if os.path.lexists(path) and (i == len(parts) or not os.path.isdir(path)):
                return "/".join(parts[:i])
    return None


def _private_dir() -> str:
    """Where this Keep keeps datasets: memory-backed when possible.  Inside a confidential VM
    this is the guest's encrypted memory; for nil/sim Keeps it is the host's (they are labelled
    NO PROTECTION / SIMULATED)."""
    given = os.environ.get("KEEPBOOK_KEEP_DIR")  # made by the loader (removed by it, too)
    if given and os.path.isdir(given):
        base: str | None = given
    else:
        base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    return tempfile.mkdtemp(prefix="keepbook-keep-", dir=base)


def server_ssl_context(key: Any, cert_der: bytes, client_cert_der: bytes) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=client_cert_der)
    # ssl wants files; write them to a private, immediately-removed temp dir in the Keep
    with tempfile.TemporaryDirectory(prefix="keepbook-tls-") as tmp:
        kp, cp = Path(tmp) / "k.pem", Path(tmp) / "c.pem"
        kp.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                         serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()))
        os.chmod(kp, 0o600)
        cp.write_bytes(x509.load_der_x509_certificate(cert_der).public_bytes(serialization.Encoding.PEM))
        ctx.load_cert_chain(cp, kp)
    return ctx


def _internal(exc: Exception) -> str:
    return f"Keep internal error ({type(exc).__name__})"  # the type only: no content leaves


async def serve(backend: str, ctrl_in: int, ctrl_out: int) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**16)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                 os.fdopen(ctrl_in, "rb", buffering=0))
    transport, proto = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin,
                                                     os.fdopen(ctrl_out, "wb", buffering=0))
    writer = asyncio.StreamWriter(transport, proto, None, loop)
    keep = Wasmldr(backend, writer)
    from keepbook.keep.inside import prewarm

    if prewarm.wanted():  # a pooled Keep: pay one-time costs before anyone waits (no client data)
        await asyncio.to_thread(prewarm.prewarm, backend, keep.make_data_root())
    keep.lifecycle("booted")

    frames = FrameReader(reader)

    async def control() -> None:
        while True:
            try:
                msg = await frames.read()
            except protocol.ProtocolError as exc:
                keep.send(protocol.ErrorBody.of(exc.status, exc.reason))
                return
            if msg is None:
                return  # keepldr went away: the Keep ends with it
            try:
                reply = await keep.handle(msg)
            except protocol.ProtocolError as exc:  # refused before it was handled
                reply = protocol.ErrorBody.of(exc.status, exc.reason)
            keep.send(reply)
            await writer.drain()

    ctl = asyncio.create_task(control())
    closed = asyncio.create_task(keep.closed.wait())
    done, _ = await asyncio.wait({ctl, closed}, return_when=asyncio.FIRST_COMPLETED)
    if ctl in done:
        # The loader is gone (killed, or the host closed the Keep): the Keep ends now.  Drop the
        # datasets and exit at once — no graceful HTTP shutdown, so a client waiting on a cell
        # sees its connection reset immediately instead of seconds later.
        if keep.data_root:
            shutil.rmtree(keep.data_root, ignore_errors=True)
        end_keep(0)
    keep.lifecycle("stopping")
    if keep.cells:
        keep.cells.close()
    if keep.data_root:
        shutil.rmtree(keep.data_root, ignore_errors=True)
    if keep.server:
        keep.server.close()
    if keep.runner:
        await keep.runner.cleanup()
    try:
        await writer.drain()
    except ConnectionError:
        pass


_SCRATCH: str | None = None


def use_private_scratch() -> str:
    """Point every temporary file of this Keep (the Python session's writable /tmp and home,
    the TLS key handed to OpenSSL) at a private, memory-backed directory, removed at exit."""
    global _SCRATCH
    _SCRATCH = _private_dir()
    os.chmod(_SCRATCH, 0o700)
    tempfile.tempdir = _SCRATCH
    os.environ["TMPDIR"] = _SCRATCH
    return _SCRATCH


def end_keep(code: int = 0) -> None:
    """The Keep is over: remove its scratch and end the process now (engines may hold threads)."""
    if _SCRATCH:
        shutil.rmtree(_SCRATCH, ignore_errors=True)
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="wasmldr")
    ap.add_argument("--backend", required=True)
    args = ap.parse_args(argv)
    ctrl_in, ctrl_out = isolate_stdio()
    use_private_scratch()
    try:
        asyncio.run(serve(args.backend, ctrl_in, ctrl_out))
    except KeyboardInterrupt:
        end_keep(130)
    end_keep(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
