"""The client agent: the Keeps of one notebook, one coroutine per user action.

It is loop-agnostic: the keepbook kernel awaits its coroutines on its own event loop (a cell's
path from ``do_execute`` to the channel and back stays on that one loop), while synchronous
callers — the IPython extension's magics, scripts, tests — use :meth:`ClientAgent.call`, which
runs them on a private loop thread started on first use.  One agent is used one way or the
other, never both (aiohttp sessions belong to the loop that made them).  Blocking work (starting
the embedded keep manager, sealing, compiling, the upload's socket) runs on worker threads."""

from __future__ import annotations

import asyncio
import os
import queue
import shlex
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator, TypeVar

from keepbook.keep.shared import audit_format, dataset_format, facts, protocol, sealing
from keepbook.kernel import dataset_sealer
from keepbook.keep.shared.evidence import simulated_roots
from keepbook.keep.shared.evidence.certs import parse_fingerprint, spki_sha256
from keepbook.kernel import sim_trust
from keepbook.kernel.attestation import AttestationResult
from keepbook.kernel.client import KeepError, KeepSession
from keepbook.kernel.manager_client import ManagerClient
from keepbook.kernel.local_manager import EmbeddedManager
from keepbook.kernel.trust_policy import TrustPolicy, default_path

T = TypeVar("T")
EventSink = Callable[[protocol.Event], None]
#: what `%keep new` without options makes, said wherever a Keep is made for the user
NEW_KEEP_DEFAULTS = (f"embedded manager (or $KEEPBOOK_MANAGER_URL), backend "
                     f"{facts.DEFAULT_BACKEND}, profile {facts.DEFAULT_PROFILE}")
#: a shared keep manager set up for the user (JupyterHub's spawner sets these, docs/deploy.md):
#: `%keep new` then uses it instead of an embedded one, with the token of $KEEPBOOK_MANAGER_TOKEN
MANAGER_URL_ENV = "KEEPBOOK_MANAGER_URL"
MANAGER_CA_ENV = "KEEPBOOK_MANAGER_CA"


@dataclass
class NewKeep:
    backend: str = facts.DEFAULT_BACKEND
    profile: str = facts.DEFAULT_PROFILE
    manager: str | None = None       # None: the embedded manager
    token_file: str | None = None
    manager_ca: str | None = None    # PEM CA to trust for an https:// manager
    memory_bytes: int = facts.DEFAULT_MEMORY_BYTES
    timeout_s: float = facts.DEFAULT_TIMEOUT_S
    output_bytes: int = facts.DEFAULT_OUTPUT_BYTES
    policy: bytes = b""
    trust_policy: str | None = None
    #: fingerprints (sha256:…) of simulated roots the user accepts for this manager
    trust_sim_roots: list[str] = field(default_factory=list)

    def accept_command(self) -> str:
        """This `%keep new`, accepting a simulated root: ``{fingerprint}`` stands for it."""
        words = ["%keep new", f"--backend {self.backend}"]
        if self.profile != facts.DEFAULT_PROFILE:
            words.append(f"--profile {self.profile}")
        for option, value in (("--manager", self.manager), ("--token-file", self.token_file),
                              ("--manager-ca", self.manager_ca), ("--trust-policy", self.trust_policy)):
            if value:
                words.append(f"{option} {shlex.quote(value)}")
        return " ".join(words + ["--trust-sim-root {fingerprint}"])


def _read_token(token_file: str | None) -> str | None:
    if token_file:
        p = Path(token_file).expanduser()
        try:
            token = p.read_text().strip()
        except OSError as exc:
            raise KeepError(f"cannot read token file {p}: {exc.strerror}") from None
        if not token:
            raise KeepError(f"token file {p} is empty")
        return token
    return os.environ.get("KEEPBOOK_MANAGER_TOKEN") or None


UPLOAD_CHUNK = 4 * 1024 * 1024  # sealed chunk size of %upload (profile: 1 MiB paid 4x the hand-offs)


def _sealed_pieces(path: Path, **kw: Any) -> Iterator[Any]:
    """The sealed stream of ``path``, sealed on a thread of its own one frame ahead of the
    consumer (the sender's thread), into three reused buffers: a fresh 4 MiB bytes per frame
    page-faults, and the seal (SHA-256 releases the GIL) overlaps the TLS send.  Each frame
    yielded is a view that stays valid until the next one is asked for.  The header is made
    here, so a bad name, key or chunk size is refused before anything is sent."""
    return _pipelined(path, dataset_sealer.Sealer(**kw))


def _pipelined(path: Path, sealer: dataset_sealer.Sealer) -> Iterator[Any]:
    size = sealer.chunk_size
    free: queue.Queue = queue.Queue()
    for _ in range(3):
        free.put(bytearray(dataset_sealer.Sealer.frame_size(size)))
    ready: queue.Queue = queue.Queue()
    stop = threading.Event()

    def produce() -> None:
        try:
            with open(path, "rb", buffering=0) as src:
                bufs = [bytearray(size), bytearray(size)]
                n = src.readinto(bufs[0])
                k = 0
                while not stop.is_set():
                    cur, nxt = bufs[k], bufs[1 - k]
                    m = src.readinto(nxt) if n == size else 0
                    out = free.get()
                    if out is None:
                        return
                    length = sealer.seal_into(memoryview(cur)[:n], m == 0, out)
                    ready.put((out, length))
                    if m == 0:
                        break
                    n, k = m, 1 - k
            ready.put((sealer.trailer_frame(), None))
        except BaseException as exc:  # handed to the consumer, raised there
            ready.put((exc, None))

    worker = threading.Thread(target=produce, name="keepbook-seal", daemon=True)
    worker.start()
    try:
        yield sealer.header_frame
        while True:
            item, length = ready.get()
            if isinstance(item, BaseException):
                raise item
            if length is None:
                yield item
                return
            yield memoryview(item)[:length]
            free.put(item)  # the consumer has sent it: the sealer may reuse it
    finally:
        stop.set()
        free.put(None)
        worker.join()


def _sim_trust(spec: NewKeep, policy: TrustPolicy, url: str | None,
               announced: bytes | None) -> sim_trust.SimRootTrust | None:
    """Which simulated roots a Keep of ``spec`` may chain to (None unless it is simulated): this
    installation's own, the one remembered for this manager, and the ones the user accepted."""
    backend = facts.BACKENDS.get(spec.backend)
    if backend is None or not backend.simulated:
        return None
    explicit: dict[bytes, str] = {}
    try:
        for fp in policy.simulated_roots:
            explicit[parse_fingerprint(fp)] = f"by your trust policy's simulated_roots ({policy.source})"
        for fp in spec.trust_sim_roots:
            explicit[parse_fingerprint(fp)] = "with --trust-sim-root"
    except ValueError as exc:
        raise KeepError(f"--trust-sim-root: {exc}") from None
    key = sim_trust.manager_key(url) if url else None
    try:
        remembered = sim_trust.lookup(key, backend.evidence) if key else None
    except sim_trust.KnownRootsError as exc:
        raise KeepError(f"your known simulated roots cannot be read: {exc}") from None
    return sim_trust.SimRootTrust(
        manager=key, kind=backend.evidence,
        allowed=policy.allow_simulated and not policy.require_hardware,
        own=tuple(simulated_roots.simulated_root_digests(backend.evidence)), remembered=remembered,
        explicit=explicit, known_path=str(sim_trust.known_file()),
        accept_command=spec.accept_command(),
        policy_path=policy.source if policy.source != TrustPolicy().source else str(default_path()),
        announced=spki_sha256(announced) if announced else None)


class ClientAgent:
    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None  # only for call()/submit()
        self._thread: threading.Thread | None = None
        self._thread_lock = threading.Lock()
        self.embedded = EmbeddedManager()
        self.sessions: dict[str, KeepSession] = {}
        self.current: KeepSession | None = None
        self._managers: dict[tuple[str, str | None, str | None], ManagerClient] = {}
        self.running_cell: str | None = None

    def prestart_embedded(self) -> None:
        """Start the embedded keep manager on a thread without waiting; a failure here is
        reported by the first `%keep new` that needs it.  Not when a shared manager is set up
        for this user ($KEEPBOOK_MANAGER_URL): it would only cost them CPU."""
        if os.environ.get(MANAGER_URL_ENV):
            return

        def start() -> None:
            try:
                self.embedded.start()
            except Exception:
                pass
        threading.Thread(target=start, name="keepbook-keepmgr-start", daemon=True).start()

    # -- for synchronous callers: a private loop thread
    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        with self._thread_lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                self._thread = threading.Thread(target=self._loop.run_forever,
                                                name="keepbook-agent", daemon=True)
                self._thread.start()
            return self._loop

    def submit(self, coro: Awaitable[T]) -> "Future[T]":
        return asyncio.run_coroutine_threadsafe(coro, self.loop)  # type: ignore[arg-type]

    def call(self, coro: Awaitable[T], timeout: float | None = None) -> T:
        return self.submit(coro).result(timeout)

    # -- Keeps
    def _manager(self, url: str | None, token_file: str | None,
                 ca_file: str | None = None) -> ManagerClient:
        if url is None:
            url, token = self.embedded.start()
        else:
            token = _read_token(token_file)
        key = (url, token, ca_file)
        if key not in self._managers:
            ctx = None
            if ca_file:
                import ssl

                try:
                    ctx = ssl.create_default_context(cafile=str(Path(ca_file).expanduser()))
                except (OSError, ssl.SSLError) as exc:
                    raise KeepError(f"cannot use {ca_file} as the keep manager's CA: {exc}") from None
            self._managers[key] = ManagerClient(url, token, ssl_context=ctx)
        return self._managers[key]

    async def new_keep(self, spec: NewKeep) -> KeepSession:
        policy = TrustPolicy.load(spec.trust_policy)
        url = spec.manager or os.environ.get(MANAGER_URL_ENV) or None
        ca = spec.manager_ca or (os.environ.get(MANAGER_CA_ENV) if url else None) or None
        manager = await asyncio.to_thread(self._manager, url, spec.token_file, ca)
        contracts = await manager.contracts()
        offered = {b.name: b for b in contracts.backends}
        usable = [b.name for b in contracts.backends if b.available]
        if spec.backend not in offered:
            raise KeepError(f"backend {spec.backend!r} is not offered by {manager.url}; "
                            f"available there: {', '.join(usable) or 'none'} — e.g. "
                            f"`%keep new --backend {usable[0] if usable else 'sim-snp'}`")
        if not offered[spec.backend].available:
            hint = ("`%keep new --backend sim-snp` gives a SIMULATED Keep here; for real "
                    f"{spec.backend.upper()} protection use a keep manager on a host that has it "
                    "(`%keep new --manager URL --token-file FILE`)")
            raise KeepError(f"backend {spec.backend!r} is not available at {manager.url}: "
                            f"{offered[spec.backend].note}. What to do: {hint}")
        req = protocol.CreateKeep(backend=spec.backend, profile=spec.profile,
                                  limits={"memory_bytes": spec.memory_bytes, "timeout_s": spec.timeout_s,
                                          "output_bytes": spec.output_bytes}, policy=spec.policy)
        req.validate()
        sim = await asyncio.to_thread(_sim_trust, spec, policy, url, offered[spec.backend].sim_root)
        if sim is not None and sim.announced is not None and sim.changed(sim.announced):
            raise KeepError(f"%keep new: {sim.changed(sim.announced)}")
        session = await KeepSession.create(manager, req, policy, sim)
        self.sessions[session.id] = session
        self.current = session
        return session

    def require_current(self) -> KeepSession:
        if self.current is None:
            raise KeepError(f"no Keep yet: run `%keep new` first ({NEW_KEEP_DEFAULTS})")
        return self.current

    async def attest(self) -> AttestationResult:
        session = self.require_current()
        return await session.attest()

    async def events(self, kind: str, *, module: bytes | None = None, code: str | None = None,
                     invoke: str | None = None, args: list | None = None,
                     timeout_s: float | None = None, fuel: int | None = None,
                     argv: list | None = None, env: list | None = None,
                     stdin: bytes | None = None) -> AsyncIterator[protocol.Event]:
        """Run one cell in the current Keep (attesting and provisioning first if needed) and
        yield its events as they arrive; the last one is its ``status``."""
        session = self.require_current()
        req = protocol.RunRequest(cell_id=uuid.uuid4().hex[:12], kind=kind,
                                  module=bytes(module) if module is not None else None, code=code,
                                  invoke=invoke, args=args, timeout_s=timeout_s, fuel=fuel,
                                  argv=argv or None, env=env or None, stdin=stdin or None)
        try:
            req.validate()
        except protocol.ProtocolError as exc:
            raise KeepError(f"the cell cannot be sent: {exc.reason}") from None
        self.running_cell = req.cell_id
        try:
            async for event in session.run(req):
                yield event
        finally:
            self.running_cell = None

    async def run(self, kind: str, sink: EventSink, **cell: Any) -> dict:
        """:meth:`events` with a callback: every event but the status goes to ``sink``; returns
        the status content."""
        status: dict = {}
        async for event in self.events(kind, **cell):
            if event.kind == "status":
                status = event.content
            else:
                sink(event)
        return status

    async def upload(self, path: str | os.PathLike, name: str | None = None, *,
                     policy: bytes = b"", owner_key: Any = None, suite: str | None = None,
                     chunk_size: int | None = None,
                     progress: Callable[[int], None] | None = None) -> dict:
        """Send a dataset to the current Keep, sealed, streamed chunk by chunk; return the
        Keep's receipt (name, path, bytes, digest, owner, policy_digest, policy).

        ``path`` is one of: a sealed dataset from ``keepbook seal`` (sent as is); a seal spec
        (``*.toml``: data, policy, owner key, suite); any other file, sealed here with
        ``policy``, ``owner_key`` (default: this user's owner key) and ``suite``.  The Keep is
        attested first: nothing leaves before its evidence verified."""
        session = self.require_current()
        channel = await session.ensure_channel()
        att = session.attestation
        assert att is not None and att.ok and att.config is not None
        p = Path(path).expanduser()
        if not p.is_file():
            raise KeepError(f"%upload: no such file {p}")
        try:
            if await asyncio.to_thread(dataset_sealer.is_sealed_file, p):
                pieces = dataset_sealer.read_chunks(p, chunk_size or UPLOAD_CHUNK)
            else:
                if p.suffix == ".toml":
                    spec = dataset_sealer.parse_spec(p)
                    p, policy, name = spec.data, spec.policy, name or spec.name
                    suite = suite or spec.suite
                    owner_key = owner_key or spec.owner_key
                if owner_key is None or isinstance(owner_key, (str, os.PathLike)):
                    owner_key = dataset_sealer.load_or_create_owner_key(owner_key)[0]
                suite = suite or sealing.DEFAULT_SUITE
                recipient = dataset_format.recipient_from_config(att.config, suite)
                pieces = _sealed_pieces(p, name=dataset_format.check_name(name or p.name),
                                        recipient=recipient, suite=suite, owner_key=owner_key,
                                        policy=policy, chunk_size=chunk_size or UPLOAD_CHUNK)
        except (dataset_format.DatasetError, OSError) as exc:
            raise KeepError(f"%upload: {exc}") from None

        try:
            return await channel.upload(pieces, name, progress=progress)
        except (dataset_format.DatasetError, OSError) as exc:
            raise KeepError(f"%upload: {exc}") from None

    async def audit(self) -> "audit_format.VerifiedLog":
        """Fetch the current Keep's audit log and verify chain, signature and binding to the
        attestation this client verified.  Raises KeepError naming the failing check."""
        session = self.require_current()
        channel = await session.ensure_channel()
        att = session.attestation
        assert att is not None and att.ok and att.config is not None
        export = await channel.audit()
        try:
            log = audit_format.verify_export(export.entries, export.head, export.signature, att.config)
        except audit_format.AuditError as exc:
            raise KeepError(f"the Keep's audit log does not verify: {exc}") from None
        log.raw = audit_format.export_file(  # type: ignore[attr-defined]
            {"entries": export.entries, "head": export.head, "signature": export.signature},
            att.response.to_cbor())
        return log

    async def interrupt(self) -> bool:
        session = self.current
        if session is None or self.running_cell is None:
            return False
        try:
            reply = await session.open_channel("interrupt the cell").request("interrupt", timeout=5.0)
        except KeepError:
            return False
        return bool(reply.get("interrupted"))

    async def request(self, op: str, args: dict | None = None) -> dict:
        session = self.require_current()
        channel = await session.ensure_channel()
        return await channel.request(op, args)

    async def ask_if_open(self, op: str, args: dict) -> dict | None:
        """A request (completion, inspection) answered only by an attested, provisioned Keep
        that is not running a cell — never by the host, and never opening a Keep for it."""
        session = self.current
        if session is None or not session.handshake.channel_open or self.running_cell:
            return None
        try:
            return await session.open_channel(f"ask for {op}").request(op, args, timeout=5.0)
        except KeepError:
            return None

    async def status(self) -> dict[str, Any]:
        """The Keep status panel: what the host says (state), what the attestation proved
        (protection), and what the Keep itself counts (cells run, bytes released)."""
        session = self.require_current()
        info = await session.manager.get(session.id)
        out: dict[str, Any] = {"id": info.id, "backend": info.backend, "profile": info.profile,
                               "state": info.state}
        if info.reason:
            out["reason"] = info.reason
        if info.host_note:
            out["host_says"] = info.host_note
        if session.attestation is None:
            out["protection"] = "not attested yet"
        else:
            out["protection"] = session.attestation.vector.label
            out["attested"] = "verified" if session.attestation.ok else "REFUSED"
            if session.attestation.fingerprint:
                out["fingerprint"] = session.attestation.fingerprint
        out["handshake"] = session.handshake.state.value
        out["endpoint"] = session.channel.url if session.channel else "(not provisioned yet)"
        out["uptime_s"] = round(time.time() - info.created, 1)
        out["cells_run"] = session.cells_run
        if session.handshake.channel_open and info.state not in ("closed", "failed"):
            try:
                keep = await session.open_channel("ask for status").request("status", timeout=5)
            except KeepError as exc:
                out["channel"] = str(exc)
                # the Keep does not answer: give the host a moment to notice that it ended
                for _ in range(10):
                    info = await session.manager.get(session.id)
                    if info.state in ("closed", "failed"):
                        out["state"], out["reason"] = info.state, info.reason or ""
                        break
                    await asyncio.sleep(0.1)
            else:  # the Keep's own counts are authoritative
                out["cells_run"] = keep.get("cells_run", out["cells_run"])
                out["bytes_released"] = keep.get("bytes_released", 0)
                out["busy"] = keep.get("busy", False)
        out["manager"] = session.manager.url
        return out

    async def budgets(self) -> dict[str, dict]:
        """The privacy budget of each dataset of the current Keep (the Keep's own accounting);
        {} before the Keep is provisioned or when it has none."""
        session = self.current
        if session is None or not session.handshake.channel_open or self.running_cell:
            return {}
        try:
            reply = await session.open_channel("ask for the privacy budget").request("budget", timeout=5)
        except KeepError:
            return {}
        budgets = reply.get("budgets")
        return budgets if isinstance(budgets, dict) else {}

    async def list(self) -> list[protocol.KeepInfo]:
        seen: list[protocol.KeepInfo] = []
        for manager in list(self._managers.values()):
            try:
                seen.extend((await manager.list()).keeps)
            except KeepError:
                continue
        return seen

    async def close(self, keep_id: str | None = None) -> str:
        session = self.sessions.get(keep_id) if keep_id else self.current
        if session is None:
            raise KeepError(f"no Keep {keep_id!r} in this notebook" if keep_id else "no Keep to close")
        await session.close()
        self.sessions.pop(session.id, None)
        if self.current is session:
            self.current = None
        return session.id

    async def shutdown(self) -> None:
        for session in list(self.sessions.values()):
            try:
                await asyncio.wait_for(session.close(), 5)
            except Exception:
                pass
        for manager in self._managers.values():
            await manager.close()
        await asyncio.to_thread(self.embedded.stop)

    def stop(self) -> None:
        """Close the Keeps and the embedded manager, from a synchronous caller."""
        try:
            self.call(self.shutdown(), timeout=15)
        except Exception:
            self.embedded.stop()
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
