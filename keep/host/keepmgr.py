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

Users (``--users FILE``, ``--token-file``): each token is one principal; a Keep belongs to the
token that created it, and another token cannot tell it from a missing one.  Named users of the
users file have quotas (Keeps and memory per user, Keeps in all, :mod:`.quotas`).

Simulated roots: the fingerprints of the roots this manager's ``sim-*`` Keeps sign with are
printed at start (``--show-sim-roots`` prints them and exits), and ``contracts`` carries their
certificates (:mod:`.sim_roots`), so users can accept them on purpose.

With ``--collateral-dir`` a hardware Keep's attest_response also carries the operator's cached
vendor collateral for its platform (:mod:`.collateral_cache`; signed, so the client checks it).

Warm pool (``--pool N``): N keepldr+wasmldr pairs per backend are started ahead of time and wait,
booted but *empty*: no config, no key, no evidence.  ``POST /v1/keeps`` hands one out, sends it
the client's Start (its config) right then, and refills the pool in the background.  Its
attestation happens afterwards, as for any Keep, with the client's fresh nonce — a pooled Keep
is never pre-attested, and each one serves exactly one create.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import itertools
import json
import os
import signal
import ssl
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from aiohttp import web

from keepbook.keep.shared import protocol
from keepbook.keep.shared import connection_guard
from keepbook.keep.shared.cbor_http import cbor_response, error_middleware, error_response, read_message
from keepbook.keep.host import backends as backends_mod
from keepbook.keep.host import kube_launcher
from keepbook.keep.host import quotas as quotas_mod
from keepbook.keep.host import sim_roots as sim_roots_mod
from keepbook.keep.host import users as users_mod
from keepbook.keep.shared.facts import POD_BACKENDS, VM_BACKENDS
from keepbook.keep.host.collateral_cache import CollateralCache, open_cache
from keepbook.keep.shared.framing import FrameReader, write_frame
from keepbook.keep.shared.handshake import Handshake, Role, State
from keepbook.keep.shared.vm_image import VM_BOOT_TIMEOUT_S

#: what the token check learnt about a request: the token's digest (who owns a Keep) and its user
OWNER = web.RequestKey("owner", str)
PRINCIPAL = web.RequestKey("principal", users_mod.Principal)

START_TIMEOUT_S = 60.0
REQUEST_TIMEOUT_S = 60.0
MAX_KEEPS = 256
MAX_POOL = 16
#: after a pooled Keep is handed out, wait this long before booting its replacement, so that the
#: replacement's start-up (a CPU-bound Python import) does not compete with the client's first
#: result on a small machine
POOL_REFILL_DELAY_S = 0.5
POOL_ENV = "KEEPBOOK_KEEPMGR_POOL"  # default of --pool (so an embedded manager can have one)


def start_timeout(backend: str) -> float:
    """How long a Keep may take to answer its start: a VM Keep boots first."""
    booted = backend in VM_BACKENDS or backend in POD_BACKENDS  # a pod's Kata VM boots too
    return VM_BOOT_TIMEOUT_S + 5.0 if booted else START_TIMEOUT_S


def loader_grace(backend: str) -> float:
    """How long a Keep's loader may take to end after its pipe closes: a pod's loader deletes
    the pod, its Service and NetworkPolicy through the cluster's API first."""
    return 5.0 if backend in POD_BACKENDS else 1.0


class Log:
    """Lifecycle log: JSON lines.  Only identifiers, states and reasons — never content."""

    def __init__(self, path: Path | None):
        self.path = path
        self._fh = open(path, "a", buffering=1) if path else sys.stderr

    def __call__(self, event: str, **detail: Any) -> None:
        """Write one line, or refuse the request that caused it: a keep manager that cannot
        keep its lifecycle log (disk full, say) answers 507 with the reason, never a bare 500."""
        try:
            self._fh.write(json.dumps({"t": round(time.time(), 3), "component": "keepmgr",
                                       "event": event, **detail}) + "\n")
            self._fh.flush()
        except OSError as exc:
            where = f" {self.path}" if self.path else ""
            raise protocol.ProtocolError(
                f"the keep manager cannot write its lifecycle log{where}: {exc.strerror or exc} — "
                "the host operator must free space (or fix the state directory)", 507) from None


@dataclass
class KeepRecord:
    info: protocol.KeepInfo
    owner: str                         # SHA-256 of the bearer token that created it
    proc: asyncio.subprocess.Process
    memory: int = 0                    # the memory limit it was created with (quotas)
    replies: asyncio.Queue = field(default_factory=asyncio.Queue)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    reader: asyncio.Task | None = None
    booted: asyncio.Event = field(default_factory=asyncio.Event)  # wasmldr said "booted"
    #: the Keep's handshake as the manager relays it; ``info.state`` is its public name
    handshake: Handshake = field(default_factory=lambda: Handshake(Role.MANAGER))

    def sync(self) -> None:
        self.info.state = self.handshake.public_state
        if self.handshake.reason:
            self.info.reason = self.handshake.reason

    @property
    def live(self) -> bool:
        return not self.handshake.state.terminal


class KeepManager:
    def __init__(self, *, backends: list[backends_mod.BackendSpec], tokens: Sequence[str] = (),
                 launcher: str = "subprocess", log: Log | None = None, pool: int = 0,
                 pool_backends: list[str] | None = None, roster: users_mod.Roster | None = None,
                 sim_roots: dict[str, sim_roots_mod.AnnouncedRoot] | None = None,
                 collateral: CollateralCache | None = None,
                 loader_args: Callable[[str], list[str]] | None = None):
        self.backends = {b.name: b for b in backends}
        if not 0 <= pool <= MAX_POOL:
            raise ValueError(f"--pool must be between 0 and {MAX_POOL}, got {pool}")
        unknown = [b for b in pool_backends or [] if b not in self.backends]
        if unknown:
            raise ValueError(f"--pool-backends names backends not offered here: {', '.join(unknown)}")
        vms = [b for b in pool_backends or [] if b in VM_BACKENDS or b in POD_BACKENDS]
        if vms:
            raise ValueError(f"--pool-backends: {', '.join(vms)} Keeps are not pooled (each VM or "
                             "pod is sized from its create request's memory limit)")
        self.pool_size = pool
        # Default: every offered process backend this host can run now (hardware ones only
        # where present).
        self.pool_backends = (list(pool_backends) if pool_backends is not None else
                              [n for n, b in self.backends.items()
                               if n not in VM_BACKENDS and n not in POD_BACKENDS
                               and b.availability()[0]]) if pool else []
        self._pool: dict[str, list[KeepRecord]] = {b: [] for b in self.pool_backends}
        self._refills: dict[str, asyncio.Task] = {}
        self._stopping = False
        # Each token is one principal; a Keep belongs to the token that created it.
        self.roster = roster or users_mod.Roster(tuple(
            users_mod.Principal(name=f"token-{i + 1}", digest=users_mod.token_digest(t))
            for i, t in enumerate(tokens)))
        self._held: dict[int, tuple[str, int]] = {}   # quota held by creates under way
        self._hold_ids = itertools.count()
        self.sim_roots = dict(sim_roots or {})
        self.launcher = launcher
        #: extra options for a backend's loader (the kubernetes launcher's namespace, image …)
        self.loader_args = loader_args or (lambda backend: [])
        self.log = log or Log(None)
        self.keeps: dict[str, KeepRecord] = {}
        #: vendor collateral the operator keeps (--collateral-dir), attached to attest answers
        self.collateral = collateral
        self.guard: connection_guard.ConnectionGuard | None = None  # set by serve()

    def log_quietly(self, event: str, **detail: Any) -> None:
        """For background work, where no request can carry the log's failure to anyone."""
        try:
            self.log(event, **detail)
        except protocol.ProtocolError:
            pass

    # ------------------------------------------------------------------ HTTP plumbing
    def app(self) -> web.Application:
        app = web.Application(client_max_size=protocol.MAX_CONTROL_BYTES,
                              middlewares=[error_middleware(protocol.MAX_CONTROL_BYTES, self._internal_error), self._auth])
        app.router.add_get("/v1/health", self.health)
        app.router.add_get("/v1/contracts", self.contracts)
        app.router.add_post("/v1/keeps", self.create)
        app.router.add_get("/v1/keeps", self.list)
        app.router.add_get("/v1/keeps/{id}", self.get)
        app.router.add_delete("/v1/keeps/{id}", self.delete)
        app.router.add_post("/v1/keeps/{id}/attest", self.attest)
        app.router.add_post("/v1/keeps/{id}/provision", self.provision)
        app.router.add_post("/v1/keeps/{id}/owner", self.owner)
        app.on_startup.append(self._fill_pools)
        app.on_shutdown.append(self._shutdown)
        return app

    def _internal_error(self, exc: Exception) -> str:
        try:
            self.log("internal-error", error=type(exc).__name__)
        except protocol.ProtocolError:
            pass
        return f"keep manager internal error ({type(exc).__name__})"

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path == "/v1/health":
            return await handler(request)
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            return error_response(401, "missing bearer token: send 'Authorization: Bearer <token>' "
                                       "(the token is in the keep manager's token file)")
        digest = hashlib.sha256(header[7:].strip().encode()).hexdigest()
        principal = self.roster.by_digest(digest)
        if principal is None:
            return error_response(401, "wrong bearer token for this keep manager")
        request[OWNER] = digest
        request[PRINCIPAL] = principal
        if self.guard is not None:  # a token-bearing connection is no longer "pending"
            self.guard.admit(request.transport)
        return await handler(request)

    async def _body(self, request: web.Request, cls: type[protocol.Message]) -> Any:
        return await read_message(request, cls)

    def _record(self, request: web.Request) -> KeepRecord:
        rec = self.keeps.get(request.match_info["id"])
        if rec is None or not hmac.compare_digest(rec.owner, request[OWNER]):
            # A Keep created with another token is indistinguishable from a missing one.
            raise protocol.ProtocolError(f"no Keep with id {request.match_info['id']!r}", 404)
        return rec

    # ------------------------------------------------------------------ endpoints
    async def health(self, request: web.Request) -> web.Response:
        # Unauthenticated: says the manager is up, and nothing about anyone's Keeps.
        content: dict[str, Any] = {}
        if self.pool_size:
            content["pool"] = {b: {"ready": sum(1 for r in recs if r.booted.is_set()),
                                   "booting": sum(1 for r in recs if not r.booted.is_set()),
                                   "size": self.pool_size}
                               for b, recs in self._pool.items()}
        return cbor_response(protocol.Reply(ok=True, content=content))

    async def contracts(self, request: web.Request) -> web.Response:
        return cbor_response(protocol.Contracts(backends=[
            b.to_message(sim_root=self.sim_roots[b.name].certificate if b.name in self.sim_roots else None)
            for b in self.backends.values()]))

    async def create(self, request: web.Request) -> web.Response:
        req: protocol.CreateKeep = await self._body(request, protocol.CreateKeep)
        spec = self.backends.get(req.backend)
        if spec is None:
            raise protocol.ProtocolError(
                f"backend {req.backend!r} is not offered here; offered: {', '.join(self.backends)}", 400)
        ok, note = spec.availability()
        if not ok:
            raise protocol.ProtocolError(f"backend {req.backend!r} is not available on this host: {note}", 409)
        live = [r for r in self.keeps.values() if r.live]
        if len(live) >= MAX_KEEPS:
            raise protocol.ProtocolError(f"this keep manager already runs {MAX_KEEPS} Keeps", 429)
        hold = self._hold_quota(request, req)
        try:
            rec = self._take_pooled(req.backend)
            pooled = rec is not None
            if rec is None:
                rec = await self._spawn(req.backend, user=request[PRINCIPAL].name)
            else:
                self._schedule_refill(req.backend, POOL_REFILL_DELAY_S)
        finally:
            self._held.pop(hold, None)   # from here on the record itself counts
        keep_id = rec.info.id
        rec.owner = request[OWNER]
        rec.memory = int(req.limits["memory_bytes"])
        rec.info.profile = req.profile
        rec.info.created = time.time()
        self.keeps[keep_id] = rec
        try:
            self.log("keep-starting", keep=keep_id, backend=req.backend, profile=req.profile,
                     pooled=pooled)
            # The Keep learns its config only now, from this request — pooled or not.
            start = protocol.Start(keep_id=keep_id, config=protocol.dumps({
                "backend": req.backend, "profile": req.profile, "limits": req.limits,
                "policy": req.policy}))
            await self._call(rec, start, protocol.Reply, start_timeout(req.backend))
            self.log("keep-ready", keep=keep_id)
        except BaseException:
            # A create that fails leaves nothing behind: no record, no processes.
            self.keeps.pop(keep_id, None)
            rec.handshake.fail("the Keep did not start")
            rec.sync()
            await asyncio.shield(self._kill(rec))
            raise
        return cbor_response(rec.info, status=201)

    async def list(self, request: web.Request) -> web.Response:
        mine = [r.info for r in self.keeps.values() if r.owner == request[OWNER]]
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
        if self.collateral is not None:
            resp = await asyncio.to_thread(self.collateral.attach, resp, rec.info.backend, rec.info.id)
        self.log("keep-attested", keep=rec.info.id, evidence=resp.evidence_kind)
        return cbor_response(resp)

    async def provision(self, request: web.Request) -> web.Response:
        rec = self._record(request)
        req = await self._body(request, protocol.ProvisionRequest)
        resp = await self._call(rec, req, protocol.ProvisionResponse, REQUEST_TIMEOUT_S)
        self.log("keep-provisioned", keep=rec.info.id)
        return cbor_response(resp)

    async def owner(self, request: web.Request) -> web.Response:
        """A data owner's sealed review request, relayed as it is: the manager cannot read it
        (sealed to the Keep) nor forge it (signed by the owner), and the reply is sealed to the
        owner.  It changes no handshake state; it may go only to a started Keep."""
        rec = self._record(request)
        req = await self._body(request, protocol.OwnerRequest)
        async with rec.lock:
            try:
                rec.handshake.require_owner_channel()
            except protocol.ProtocolError as exc:
                raise protocol.ProtocolError(f"Keep {rec.info.id}: {exc.reason}", exc.status) from None
            reply = await self._exchange(rec, req, REQUEST_TIMEOUT_S)
        if isinstance(reply, protocol.ErrorBody):
            raise protocol.ProtocolError(reply.reason, reply.status if 400 <= reply.status < 600 else 502)
        if not isinstance(reply, protocol.OwnerReply):
            raise protocol.ProtocolError(f"Keep answered {reply.MSG!r} to 'owner_request'", 502)
        self.log("keep-owner-request", keep=rec.info.id)
        return cbor_response(reply)

    # ------------------------------------------------------------------ quotas
    def _usage(self, owner: str | None) -> quotas_mod.Usage:
        """Live Keeps (and creates under way) of ``owner``, or of everyone when None."""
        held = [(o, m) for o, m in self._held.values()]
        held += [(r.owner, r.memory) for r in self.keeps.values() if r.live]
        mine = [m for o, m in held if owner is None or hmac.compare_digest(o, owner)]
        return quotas_mod.Usage(keeps=len(mine), memory=sum(mine))

    def _hold_quota(self, request: web.Request, req: protocol.CreateKeep) -> int:
        """Refuse a create over quota (429, naming the limit and the current use); else hold
        its share until the Keep's record counts, so two creates at once cannot both pass."""
        principal: users_mod.Principal = request[PRINCIPAL]
        memory = int(req.limits["memory_bytes"])
        why = quotas_mod.refusal(principal.name, principal.quota, self._usage(request[OWNER]),
                                 memory, self._usage(None).keeps, self.roster.max_keeps_total,
                                 self.roster.source)
        if why is not None:
            self.log("quota-refused", user=principal.name, backend=req.backend)
            raise protocol.ProtocolError(why, 429)
        hold = next(self._hold_ids)
        self._held[hold] = (request[OWNER], memory)
        return hold

    # ------------------------------------------------------------------ keepldr processes, pool
    async def _spawn(self, backend: str, prewarm: bool = False, user: str = "") -> KeepRecord:
        """Start a keepldr (which starts the Keep's wasmldr).  Not yet anyone's, not started.
        ``prewarm``: a pooled Keep, which may pay its one-time start-up costs before it says it
        has booted (it has time; a Keep started for a waiting client has not)."""
        keep_id = uuid.uuid4().hex[:16]
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "keepbook.keep.host.keepldr", "--backend", backend,
            "--keep-id", keep_id, "--launcher", self.launcher, *(["--prewarm"] if prewarm else []),
            *self.loader_args(backend), *(["--user", user] if user and backend in POD_BACKENDS else []),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=None, start_new_session=True, env=backends_mod.env_for_wasmldr())
        info = protocol.KeepInfo(id=keep_id, backend=backend, profile="staging",
                                 state="starting", created=time.time())
        rec = KeepRecord(info=info, owner="", proc=proc)
        rec.reader = asyncio.create_task(self._read_replies(rec))
        return rec

    @staticmethod
    def _usable(rec: KeepRecord) -> bool:
        return rec.proc.returncode is None and rec.handshake.state is State.NEW

    def _take_pooled(self, backend: str) -> KeepRecord | None:
        """A pooled Keep for ``backend`` (booted ones first), removed from the pool; or None."""
        pool = self._pool.get(backend)
        if not pool:
            return None
        pool[:] = [r for r in pool if self._usable(r)]
        for rec in sorted(pool, key=lambda r: not r.booted.is_set()):
            pool.remove(rec)
            self.log_quietly("pool-take", keep=rec.info.id, backend=backend, booted=rec.booted.is_set())
            return rec
        return None

    def _schedule_refill(self, backend: str, delay: float = 0.0) -> None:
        if backend not in self._pool or self._stopping:
            return
        task = self._refills.get(backend)
        if task is None or task.done():
            self._refills[backend] = asyncio.create_task(self._refill(backend, delay))

    async def _refill(self, backend: str, delay: float) -> None:
        """Boot Keeps one at a time until the pool is full again (one at a time: on a small host
        parallel boots only slow each other and the Keeps in use)."""
        await asyncio.sleep(delay)
        pool = self._pool[backend]
        while not self._stopping:
            pool[:] = [r for r in pool if self._usable(r)]
            if len(pool) >= self.pool_size:
                return
            rec = await self._spawn(backend, prewarm=True)
            pool.append(rec)
            try:
                await asyncio.wait_for(rec.booted.wait(), START_TIMEOUT_S)
            except asyncio.TimeoutError:
                self.log_quietly("pool-boot-failed", keep=rec.info.id, backend=backend)
                if rec in pool:
                    pool.remove(rec)
                await self._stop(rec, "did not boot in time")
                await asyncio.sleep(5.0)  # a broken backend must not spin
                continue
            if not self._usable(rec):  # died while booting
                self.log_quietly("pool-boot-failed", keep=rec.info.id, backend=backend)
                await asyncio.sleep(5.0)
                continue
            self.log_quietly("pool-ready", keep=rec.info.id, backend=backend)

    async def _fill_pools(self, app: web.Application) -> None:
        for backend in self._pool:
            self._schedule_refill(backend)

    # ------------------------------------------------------------------ keepldr relay
    async def _read_replies(self, rec: KeepRecord) -> None:
        reason = "the Keep's loader exited"
        frames = FrameReader(rec.proc.stdout)  # type: ignore[arg-type]
        try:
            while True:
                msg = await frames.read()
                if msg is None:
                    break
                if isinstance(msg, protocol.Lifecycle):
                    self.log_quietly("keep-lifecycle", keep=rec.info.id, keep_event=msg.event)
                    if msg.event == "booted":
                        rec.booted.set()
                        if msg.detail:  # a VM Keep's loader says how it runs it
                            rec.info.host_note = msg.detail
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
        if rec.handshake.state is not State.CLOSED:
            rec.handshake.fail(reason)
            rec.sync()
            self.log_quietly("keep-failed", keep=rec.info.id, reason=reason)
        # The loader is gone (it removes the Keep's directory itself when it can; if it was
        # killed, nobody else will).
        backends_mod.remove_keep_scratch(rec.info.id)
        await rec.replies.put(protocol.ErrorBody(status=502, reason=reason))

    async def _call(self, rec: KeepRecord, msg: protocol.Message, expect: type, timeout: float) -> Any:
        """Relay one request to the Keep and wait for its answer.  The handshake decides first
        whether the request is allowed now, and learns the answer (or that none came)."""
        async with rec.lock:
            try:
                rec.handshake.receive(msg)
            except protocol.ProtocolError as exc:
                raise protocol.ProtocolError(f"Keep {rec.info.id}: {exc.reason}", exc.status) from None
            try:
                reply = await self._exchange(rec, msg, timeout)
            except BaseException:
                rec.handshake.abandon()
                rec.sync()
                raise
            if rec.handshake.state.terminal:  # the Keep's loader died meanwhile
                raise protocol.ProtocolError(
                    f"Keep {rec.info.id} is {rec.handshake.state.value}: {rec.handshake.reason}", 502)
            if not isinstance(reply, (expect, protocol.ErrorBody)):
                rec.handshake.abandon()
                rec.sync()
                raise protocol.ProtocolError(f"Keep answered {reply.MSG!r} to {msg.MSG!r}", 502)
            rec.handshake.receive(reply)
            rec.sync()
        if isinstance(reply, protocol.ErrorBody):
            raise protocol.ProtocolError(reply.reason, reply.status if 400 <= reply.status < 600 else 502)
        return reply

    async def _exchange(self, rec: KeepRecord, msg: protocol.Message, timeout: float) -> Any:
        """Write one frame to the Keep's loader; the next frame it answers (stale answers of
        requests that timed out are dropped first)."""
        while not rec.replies.empty():
            rec.replies.get_nowait()
        try:
            assert rec.proc.stdin is not None
            write_frame(rec.proc.stdin, msg)  # type: ignore[arg-type]
            await rec.proc.stdin.drain()
        except (ConnectionError, RuntimeError):
            raise protocol.ProtocolError(f"Keep {rec.info.id} is gone: its loader exited", 502)
        try:
            return await asyncio.wait_for(rec.replies.get(), timeout)
        except asyncio.TimeoutError:
            raise protocol.ProtocolError(
                f"Keep {rec.info.id} did not answer {msg.MSG!r} within {timeout:.0f} s", 504) from None

    async def _stop(self, rec: KeepRecord, reason: str) -> None:
        rec.handshake.close(reason)
        rec.sync()
        rec.info.reason = rec.handshake.reason
        await self._kill(rec)
        try:
            self.log("keep-closed", keep=rec.info.id)
        except protocol.ProtocolError:
            pass  # the Keep is closed either way; the log's trouble is reported elsewhere

    async def _kill(self, rec: KeepRecord) -> None:
        """End a Keep's processes: close its pipe (the loader exits, the Keep with it), then
        SIGKILL the whole process group after a second."""
        if rec.proc.returncode is None:
            try:
                if rec.proc.stdin:
                    rec.proc.stdin.close()
                await asyncio.wait_for(rec.proc.wait(), loader_grace(rec.info.backend))
            except (asyncio.TimeoutError, ConnectionError):
                pass
            if rec.proc.returncode is None:
                try:
                    os.killpg(rec.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                await rec.proc.wait()
        backends_mod.remove_keep_scratch(rec.info.id)  # in case the loader died with the Keep

    async def _shutdown(self, app: web.Application) -> None:
        self._stopping = True
        for task in self._refills.values():
            task.cancel()
        pooled = [r for recs in self._pool.values() for r in recs]
        await asyncio.gather(*(self._stop(r, "keep manager shut down")
                               for r in [*self.keeps.values(), *pooled] if r.proc.returncode is None),
                             return_exceptions=True)


# ---------------------------------------------------------------------- command line


async def serve(args: argparse.Namespace) -> None:
    state_dir = Path(args.state_dir).expanduser()
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    roster, token_path = users_mod.roster(args.users, args.token_file or [], state_dir)
    log = Log(Path(args.log_file) if args.log_file else None)
    names = [n for n in args.backends.split(",") if n] if args.backends else None
    pool_backends = [n for n in args.pool_backends.split(",") if n] if args.pool_backends else None
    kube = args.launcher == kube_launcher.LAUNCHER
    offered = await kube_launcher.offered(args) if kube else backends_mod.offered(names)
    roots = await announce_sim_roots(offered)
    mgr = KeepManager(backends=offered, launcher=args.launcher, log=log, pool=args.pool,
                      pool_backends=pool_backends, roster=roster, sim_roots=roots,
                      loader_args=kube_launcher.loader_args(args) if kube else None)
    mgr.collateral = open_cache(args.collateral_dir, mgr.log_quietly)
    app = mgr.app()
    app[connection_guard.BODY_IDLE] = args.body_timeout
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    ssl_ctx = None
    if args.tls_cert:
        ssl_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_ctx.load_cert_chain(args.tls_cert, args.tls_key)
    # behind the slowloris guard: pending (not yet token-bearing) connections bounded in number
    # and in time, bodies read with a limit on silence (keep/shared/connection_guard.py)
    server, mgr.guard, port = await connection_guard.serve(
        runner, args.host, args.port, ssl_context=ssl_ctx, header_s=args.header_timeout,
        max_pending=args.max_pending)
    url = f"{'https' if ssl_ctx else 'http'}://{args.host}:{port}"
    log("keepmgr-listening", url=url, backends=list(mgr.backends))
    print(f"keepbook keepmgr: listening on {url}", flush=True)
    if args.ready_file:
        tmp = Path(args.ready_file + ".tmp")
        tmp.write_text(json.dumps({"url": url, "pid": os.getpid(),
                                   "token_file": str(token_path) if token_path else None,
                                   "sim_roots": {b: r.fingerprint for b, r in roots.items()}}))
        os.replace(tmp, args.ready_file)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if args.parent_pid:
        asyncio.create_task(_watch_parent(args.parent_pid, stop))
    await stop.wait()
    log("keepmgr-stopping")
    server.close()
    await runner.cleanup()


async def announce_sim_roots(offered: list[backends_mod.BackendSpec]
                             ) -> dict[str, sim_roots_mod.AnnouncedRoot]:
    """Make (if missing) and print the simulated roots this manager's Keeps sign with."""
    roots, problems = await asyncio.to_thread(sim_roots_mod.announce, offered)
    sim_roots_mod.print_roots(roots, problems, sys.stdout)
    return roots


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
    ap.add_argument("--users", metavar="FILE",
                    help="users file (TOML): each user's name, token file or token hash, and "
                         "quotas (Keeps and memory per user, Keeps in all); beside --token-file")
    ap.add_argument("--show-sim-roots", action="store_true",
                    help="print the fingerprints of the simulated roots this manager's Keeps sign "
                         "with (made if missing) and exit; with --users, also check the users "
                         "file (making its missing token files) and list its quotas")
    ap.add_argument("--tls-cert", help="serve the API over TLS with this certificate (PEM)")
    ap.add_argument("--tls-key", help="private key for --tls-cert (PEM)")
    ap.add_argument("--launcher", choices=("subprocess", "systemd-run", kube_launcher.LAUNCHER),
                    default="subprocess")
    ap.add_argument("--log-file", help="lifecycle log (JSON lines); default stderr")
    ap.add_argument("--ready-file", help="write {url, pid, token_file} here once listening")
    ap.add_argument("--parent-pid", type=int, help="exit when this process exits")
    ap.add_argument("--header-timeout", type=float, default=connection_guard.HEADER_S, metavar="S",
                    help="close a connection that has not sent a request with a valid token "
                         f"within S seconds (default {connection_guard.HEADER_S:g})")
    ap.add_argument("--body-timeout", type=float, default=connection_guard.BODY_IDLE_S, metavar="S",
                    help="refuse a request whose body stops arriving for S seconds (default "
                         f"{connection_guard.BODY_IDLE_S:g})")
    ap.add_argument("--max-pending", type=int, default=connection_guard.MAX_PENDING, metavar="N",
                    help="at most N connections without a valid token at once; one more closes "
                         f"the oldest (default {connection_guard.MAX_PENDING})")
    ap.add_argument("--pool", type=int, default=_env_int(POOL_ENV, 0), metavar="N",
                    help=f"keep N booted, empty Keeps per backend ready for the next create, "
                         f"refilled in the background (0-{MAX_POOL}; default ${POOL_ENV} or 0).  "
                         f"They get their config at create time and are attested fresh")
    ap.add_argument("--pool-backends", default="", metavar="LIST",
                    help="comma-separated backends to pool (default: every offered backend "
                         "available on this host)")
    ap.add_argument("--collateral-dir", metavar="DIR",
                    help="vendor collateral to hand to clients with a hardware Keep's evidence: "
                         "Intel PCS TCB info / QE identity / issuer chains / CRLs (raw bodies or "
                         "dcap-qvl collateral JSON), found by FMSPC; AMD CRLs.  Signed by the "
                         "vendor: clients verify it.  Re-read when a file changes")
    kube_launcher.add_arguments(ap)
    return ap


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def systemd_run_problem() -> str | None:
    """Why `systemd-run --user` cannot start a Keep here (None if it can): checked once at start,
    so a missing user bus is a clear start error instead of every Keep failing later."""
    import shutil
    import subprocess

    if shutil.which("systemd-run") is None:
        return "systemd-run is not on PATH"
    try:
        r = subprocess.run(["systemd-run", "--user", "--quiet", "--pipe", "--collect", "true"],
                           capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"systemd-run did not run ({exc})"
    if r.returncode != 0:
        return (r.stderr.strip() or f"systemd-run --user exited with {r.returncode}")[:300]
    return None


def show_setup(args: argparse.Namespace) -> int:
    """``--show-sim-roots``: what an operator checks before users come — the simulated roots
    (made if missing) and, with ``--users``, the users file (its missing token files made)."""
    try:
        offered = backends_mod.offered([n for n in args.backends.split(",") if n] or None)
        roster = users_mod.load_users(args.users) if args.users else None
    except ValueError as exc:
        print(f"keepmgr: {exc}", file=sys.stderr)
        return 2
    roots = asyncio.run(announce_sim_roots(offered))
    if roster is not None:
        print(users_mod.describe(roster))
    if not roots and any(b.facts.simulated for b in offered):
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if bool(args.tls_cert) != bool(args.tls_key):
        print("keepmgr: --tls-cert and --tls-key go together", file=sys.stderr)
        return 2
    if args.launcher == "systemd-run":
        problem = systemd_run_problem()
        if problem:
            print(f"keepmgr: --launcher systemd-run cannot start Keeps here: {problem}; "
                  "use --launcher subprocess, or run under a user systemd instance "
                  "(`systemctl --user status`)", file=sys.stderr)
            return 2
    problem = kube_launcher.check(args)
    if problem:
        print(f"keepmgr: {problem}", file=sys.stderr)
        return 2
    if args.show_sim_roots:
        return show_setup(args)
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
