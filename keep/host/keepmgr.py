"""keepmgr: the keep manager, one per host.  Untrusted by design.

An aiohttp server with CBOR bodies.  It starts one keepldr per Keep and relays the attestation
and provisioning messages to it.  It never holds a key that could read a Keep: evidence is
public, provisioning is sealed to a key made inside the Keep, and cells travel on a TLS channel
that ends inside the Keep.  It logs lifecycle events only.

Endpoints (all but ``/v1/health`` need ``Authorization: Bearer <token>``)::

    GET    /v1/health
    GET    /v1/contracts
    POST   /v1/keeps                     create_keep      -> keep_info
    GET    /v1/keeps                                      -> keep_list
    GET    /v1/keeps/{id}                                 -> keep_info
    DELETE /v1/keeps/{id}                                 -> keep_info (closed)
    POST   /v1/keeps/{id}/attest         attest           -> attest_response
    POST   /v1/keeps/{id}/provision      provision        -> provision_response
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import os
import secrets
import signal
import ssl
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from keepbook.keep import protocol
from keepbook.keep.host import backends as backends_mod
from keepbook.keep.framing import read_frame, write_frame

START_TIMEOUT_S = 60.0
REQUEST_TIMEOUT_S = 60.0
MAX_KEEPS = 256


class Log:
    """Lifecycle log: JSON lines.  Only identifiers, states and reasons — never content."""

    def __init__(self, path: Path | None):
        self._fh = open(path, "a", buffering=1) if path else sys.stderr

    def __call__(self, event: str, **detail: Any) -> None:
        self._fh.write(json.dumps({"t": round(time.time(), 3), "component": "keepmgr",
                                   "event": event, **detail}) + "\n")
        self._fh.flush()


@dataclass
class KeepRecord:
    info: protocol.KeepInfo
    owner: str                         # SHA-256 of the bearer token that created it
    proc: asyncio.subprocess.Process
    replies: asyncio.Queue = field(default_factory=asyncio.Queue)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    reader: asyncio.Task | None = None


class KeepManager:
    def __init__(self, *, backends: list[backends_mod.BackendSpec], tokens: list[str],
                 launcher: str = "subprocess", log: Log | None = None):
        self.backends = {b.name: b for b in backends}
        # Each token is one principal; a Keep belongs to the token that created it.
        self._token_digests = [hashlib.sha256(t.encode()).hexdigest() for t in tokens]
        self.launcher = launcher
        self.log = log or Log(None)
        self.keeps: dict[str, KeepRecord] = {}

    # ------------------------------------------------------------------ HTTP plumbing
    def app(self) -> web.Application:
        app = web.Application(client_max_size=protocol.MAX_CONTROL_BYTES,
                              middlewares=[self._errors, self._auth])
        app.router.add_get("/v1/health", self.health)
        app.router.add_get("/v1/contracts", self.contracts)
        app.router.add_post("/v1/keeps", self.create)
        app.router.add_get("/v1/keeps", self.list)
        app.router.add_get("/v1/keeps/{id}", self.get)
        app.router.add_delete("/v1/keeps/{id}", self.delete)
        app.router.add_post("/v1/keeps/{id}/attest", self.attest)
        app.router.add_post("/v1/keeps/{id}/provision", self.provision)
        app.on_shutdown.append(self._shutdown)
        return app

    @web.middleware
    async def _errors(self, request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            return await handler(request)
        except protocol.ProtocolError as exc:
            return error_response(exc.status, exc.reason)
        except web.HTTPRequestEntityTooLarge:
            return error_response(413, f"request body exceeds the limit of "
                                       f"{protocol.MAX_CONTROL_BYTES} bytes")
        except web.HTTPException as exc:
            if exc.status >= 400:
                return error_response(exc.status, exc.reason or "request refused")
            raise
        except Exception as exc:  # never crash the server; say what happened
            self.log("internal-error", error=type(exc).__name__)
            return error_response(500, f"keep manager internal error ({type(exc).__name__})")

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path == "/v1/health":
            return await handler(request)
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            return error_response(401, "missing bearer token: send 'Authorization: Bearer <token>' "
                                       "(the token is in the keep manager's token file)")
        digest = hashlib.sha256(header[7:].strip().encode()).hexdigest()
        if not any([hmac.compare_digest(digest, d) for d in self._token_digests]):
            return error_response(401, "wrong bearer token for this keep manager")
        request["owner"] = digest
        return await handler(request)

    async def _body(self, request: web.Request, cls: type[protocol.Message]) -> Any:
        ctype = request.headers.get("Content-Type", "")
        if ctype.split(";")[0].strip() != protocol.CBOR:
            raise protocol.ProtocolError(
                f"wrong content type {ctype or '(none)'!r}: send {protocol.CBOR}", 415)
        return cls.from_cbor(await request.read())

    def _record(self, request: web.Request) -> KeepRecord:
        rec = self.keeps.get(request.match_info["id"])
        if rec is None or not hmac.compare_digest(rec.owner, request["owner"]):
            # A Keep created with another token is indistinguishable from a missing one.
            raise protocol.ProtocolError(f"no Keep with id {request.match_info['id']!r}", 404)
        return rec

    # ------------------------------------------------------------------ endpoints
    async def health(self, request: web.Request) -> web.Response:
        return cbor_response(protocol.Reply(ok=True, content={"keeps": len(self.keeps)}))

    async def contracts(self, request: web.Request) -> web.Response:
        return cbor_response(protocol.Contracts(
            backends=[b.to_message() for b in self.backends.values()]))

    async def create(self, request: web.Request) -> web.Response:
        req: protocol.CreateKeep = await self._body(request, protocol.CreateKeep)
        spec = self.backends.get(req.backend)
        if spec is None:
            raise protocol.ProtocolError(
                f"backend {req.backend!r} is not offered here; offered: {', '.join(self.backends)}", 400)
        ok, note = spec.availability()
        if not ok:
            raise protocol.ProtocolError(f"backend {req.backend!r} is not available on this host: {note}", 409)
        live = [r for r in self.keeps.values() if r.info.state not in ("closed", "failed")]
        if len(live) >= MAX_KEEPS:
            raise protocol.ProtocolError(f"this keep manager already runs {MAX_KEEPS} Keeps", 429)
        keep_id = uuid.uuid4().hex[:16]
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "keepbook.keep.host.keepldr", "--backend", req.backend,
            "--keep-id", keep_id, "--launcher", self.launcher,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=None, start_new_session=True, env=backends_mod.env_for_wasmldr())
        info = protocol.KeepInfo(id=keep_id, backend=req.backend, profile=req.profile,
                                 state="starting", created=time.time())
        rec = KeepRecord(info=info, owner=request["owner"], proc=proc)
        self.keeps[keep_id] = rec
        rec.reader = asyncio.create_task(self._read_replies(rec))
        self.log("keep-starting", keep=keep_id, backend=req.backend, profile=req.profile)
        start = protocol.Start(keep_id=keep_id, config=protocol.dumps({
            "backend": req.backend, "profile": req.profile, "limits": req.limits,
            "policy": req.policy}))
        await self._call(rec, start, protocol.Reply, START_TIMEOUT_S)
        info.state = "ready"
        self.log("keep-ready", keep=keep_id)
        return cbor_response(info, status=201)

    async def list(self, request: web.Request) -> web.Response:
        mine = [r.info for r in self.keeps.values() if r.owner == request["owner"]]
        return cbor_response(protocol.KeepList(keeps=mine))

    async def get(self, request: web.Request) -> web.Response:
        return cbor_response(self._record(request).info)

    async def delete(self, request: web.Request) -> web.Response:
        rec = self._record(request)
        await self._stop(rec, "closed by client")
        return cbor_response(rec.info)

    async def attest(self, request: web.Request) -> web.Response:
        rec = self._record(request)
        req = await self._body(request, protocol.AttestRequest)
        resp = await self._call(rec, req, protocol.AttestResponse, REQUEST_TIMEOUT_S)
        if rec.info.state == "ready":
            rec.info.state = "attested"
        self.log("keep-attested", keep=rec.info.id, evidence=resp.evidence_kind)
        return cbor_response(resp)

    async def provision(self, request: web.Request) -> web.Response:
        rec = self._record(request)
        req = await self._body(request, protocol.ProvisionRequest)
        resp = await self._call(rec, req, protocol.ProvisionResponse, REQUEST_TIMEOUT_S)
        rec.info.state = "provisioned"
        self.log("keep-provisioned", keep=rec.info.id)
        return cbor_response(resp)

    # ------------------------------------------------------------------ keepldr relay
    async def _read_replies(self, rec: KeepRecord) -> None:
        reason = "the Keep's loader exited"
        try:
            while True:
                msg = await read_frame(rec.proc.stdout)  # type: ignore[arg-type]
                if msg is None:
                    break
                if isinstance(msg, protocol.Lifecycle):
                    self.log("keep-lifecycle", keep=rec.info.id, keep_event=msg.event)
                    if msg.event == "exited":
                        reason = f"the Keep exited ({msg.detail})"
                    continue
                if isinstance(msg, protocol.DebugLog):
                    continue  # keepldr logged it already (debug profile only)
                await rec.replies.put(msg)
        except protocol.ProtocolError as exc:
            reason = f"the Keep's loader broke the protocol: {exc.reason}"
        except Exception as exc:  # pragma: no cover - defensive
            reason = f"lost the Keep's loader ({type(exc).__name__})"
        if rec.info.state not in ("closed",):
            rec.info.state = "failed"
            rec.info.reason = reason
            self.log("keep-failed", keep=rec.info.id, reason=reason)
        await rec.replies.put(protocol.ErrorBody(status=502, reason=reason))

    async def _call(self, rec: KeepRecord, msg: protocol.Message, expect: type, timeout: float) -> Any:
        if rec.info.state in ("closed", "failed"):
            raise protocol.ProtocolError(
                f"Keep {rec.info.id} is {rec.info.state}" + (f": {rec.info.reason}" if rec.info.reason else ""), 409)
        async with rec.lock:
            while not rec.replies.empty():  # drop stale answers of timed-out calls
                rec.replies.get_nowait()
            try:
                assert rec.proc.stdin is not None
                write_frame(rec.proc.stdin, msg)  # type: ignore[arg-type]
                await rec.proc.stdin.drain()
            except (ConnectionError, RuntimeError):
                raise protocol.ProtocolError(f"Keep {rec.info.id} is gone: its loader exited", 502)
            try:
                reply = await asyncio.wait_for(rec.replies.get(), timeout)
            except asyncio.TimeoutError:
                raise protocol.ProtocolError(
                    f"Keep {rec.info.id} did not answer {msg.MSG!r} within {timeout:.0f} s", 504) from None
        if isinstance(reply, protocol.ErrorBody):
            raise protocol.ProtocolError(reply.reason, reply.status if 400 <= reply.status < 600 else 502)
        if not isinstance(reply, expect):
            raise protocol.ProtocolError(f"Keep answered {reply.MSG!r} to {msg.MSG!r}", 502)
        return reply

    async def _stop(self, rec: KeepRecord, reason: str) -> None:
        if rec.info.state != "failed":
            rec.info.state = "closed"
        rec.info.reason = reason
        if rec.proc.returncode is None:
            try:
                if rec.proc.stdin:
                    rec.proc.stdin.close()
                await asyncio.wait_for(rec.proc.wait(), 1.0)
            except (asyncio.TimeoutError, ConnectionError):
                pass
            if rec.proc.returncode is None:
                try:
                    os.killpg(rec.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                await rec.proc.wait()
        self.log("keep-closed", keep=rec.info.id)

    async def _shutdown(self, app: web.Application) -> None:
        await asyncio.gather(*(self._stop(r, "keep manager shut down")
                               for r in self.keeps.values() if r.proc.returncode is None),
                             return_exceptions=True)


def cbor_response(msg: protocol.Message, status: int = 200) -> web.Response:
    return web.Response(body=msg.to_cbor(), status=status, content_type=protocol.CBOR)


def error_response(status: int, reason: str) -> web.Response:
    return web.Response(body=protocol.ErrorBody(status=status, reason=reason).to_cbor(),
                        status=status, content_type=protocol.CBOR)


# ---------------------------------------------------------------------- command line


def load_or_make_token(token_file: Path | None, state_dir: Path) -> tuple[str, Path]:
    """The token is one line of text in a file only its user can read (made if missing)."""
    if token_file is not None and token_file.exists():
        token = token_file.read_text().strip()
        if not token:
            raise SystemExit(f"keepmgr: token file {token_file} is empty")
        return token, token_file
    path = token_file or state_dir / "token"
    token = secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    return token, path


async def serve(args: argparse.Namespace) -> None:
    state_dir = Path(args.state_dir).expanduser()
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    files = [Path(f) for f in (args.token_file or [])] or [None]
    pairs = [load_or_make_token(f, state_dir) for f in files]
    token_path = pairs[0][1]
    log = Log(Path(args.log_file) if args.log_file else None)
    names = [n for n in args.backends.split(",") if n] if args.backends else None
    mgr = KeepManager(backends=backends_mod.offered(names), tokens=[t for t, _ in pairs],
                      launcher=args.launcher, log=log)
    runner = web.AppRunner(mgr.app(), access_log=None, handle_signals=False)
    await runner.setup()
    ssl_ctx = None
    if args.tls_cert:
        ssl_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_ctx.load_cert_chain(args.tls_cert, args.tls_key)
    site = web.TCPSite(runner, args.host, args.port, ssl_context=ssl_ctx, shutdown_timeout=2)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    url = f"{'https' if ssl_ctx else 'http'}://{args.host}:{port}"
    log("keepmgr-listening", url=url, backends=list(mgr.backends))
    if args.ready_file:
        tmp = Path(args.ready_file + ".tmp")
        tmp.write_text(json.dumps({"url": url, "pid": os.getpid(), "token_file": str(token_path)}))
        os.replace(tmp, args.ready_file)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if args.parent_pid:
        asyncio.create_task(_watch_parent(args.parent_pid, stop))
    await stop.wait()
    log("keepmgr-stopping")
    await runner.cleanup()


async def _watch_parent(pid: int, stop: asyncio.Event) -> None:
    """An embedded manager dies with the kernel that started it, even after kill -9."""
    while not stop.is_set():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            stop.set()
            return
        await asyncio.sleep(1.0)


def default_state_dir() -> Path:
    import platformdirs
    return Path(platformdirs.user_state_dir("keepbook")) / "keepmgr"


def build_parser(ap: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    ap = ap or argparse.ArgumentParser(prog="keepbook keepmgr", description="Run a keep manager.")
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback)")
    ap.add_argument("--port", type=int, default=8473, help="port (0 = any free port)")
    ap.add_argument("--backends", default="", help="comma-separated backends to offer "
                    f"(default: {','.join(backends_mod.DEFAULT_BACKENDS)})")
    ap.add_argument("--state-dir", default=str(default_state_dir()))
    ap.add_argument("--token-file", action="append",
                    help="bearer token file (one line); made if missing.  Repeat for several "
                         "users: each sees and controls only the Keeps it created")
    ap.add_argument("--tls-cert", help="serve the API over TLS with this certificate (PEM)")
    ap.add_argument("--tls-key", help="private key for --tls-cert (PEM)")
    ap.add_argument("--launcher", choices=("subprocess", "systemd-run"), default="subprocess")
    ap.add_argument("--log-file", help="lifecycle log (JSON lines); default stderr")
    ap.add_argument("--ready-file", help="write {url, pid, token_file} here once listening")
    ap.add_argument("--parent-pid", type=int, help="exit when this process exits")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if bool(args.tls_cert) != bool(args.tls_key):
        print("keepmgr: --tls-cert and --tls-key go together", file=sys.stderr)
        return 2
    try:
        asyncio.run(serve(args))
    except ValueError as exc:
        print(f"keepmgr: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"keepmgr: cannot listen on {args.host}:{args.port}: {exc.strerror}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
