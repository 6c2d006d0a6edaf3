"""A keep manager of the bench's own (so it can have a warm pool) and a client agent talking to
it: the same code path as `%keep new --manager URL`, minus the notebook."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path

from keepbook.keep.shared import protocol
from keepbook.kernel.local_manager import ManagerProcess
from keepbook.kernel.agent import ClientAgent, NewKeep

TRIVIAL_WAT = '(module (func (export "answer") (result i32) i32.const 42))'


def trivial_module() -> bytes:
    import wasmtime

    return bytes(wasmtime.wat2wasm(TRIVIAL_WAT))


class Manager(ManagerProcess):
    """`keepbook keepmgr` on loopback, a free port, a private state dir; stopped on exit."""

    def __init__(self, backends: str = "nil,sim-snp", pool: int = 0):
        self.backends, self.pool = backends, pool
        state = Path(tempfile.mkdtemp(prefix="keepbook-bench-"))
        os.chmod(state, 0o700)
        super().__init__(state, backends=backends, parent_pid=os.getpid(),
                         extra=["--pool", str(pool)] if pool else None)
        self.token_file = str(self.token_file)

    def pool_ready(self, backend: str) -> int:
        """Booted Keeps waiting in the pool for ``backend`` (from /v1/health)."""
        import urllib.request

        with urllib.request.urlopen(self.url + "/v1/health", timeout=5) as resp:
            reply = protocol.Reply.from_cbor(resp.read())
        return int((reply.content.get("pool") or {}).get(backend, {}).get("ready", 0))

    def wait_pool(self, backend: str, want: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.pool_ready(backend) < want:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the pool for {backend} did not refill within {timeout:.0f} s")
            time.sleep(0.05)

    def pids(self) -> list[int]:
        """keepldr and wasmldr processes under this manager (all descendants)."""
        return descendants(self.proc.pid)

    def stop(self, wait_s: float = 10.0) -> None:
        super().stop(wait_s)
        shutil.rmtree(self.dir, ignore_errors=True)


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                kids = open(f"/proc/{p}/task/{task}/children").read().split()
                for k in kids:
                    out.append(int(k))
                    todo.append(int(k))
        except OSError:
            continue
    return out


def rss_bytes(pid: int) -> int:
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def pss_bytes(pid: int) -> int:
    try:
        for line in open(f"/proc/{pid}/smaps_rollup"):
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class Lab:
    """One client agent bound to one bench manager."""

    def __init__(self, manager: Manager, backend: str = "sim-snp", memory_bytes: int | None = None):
        self.manager = manager
        self.backend = backend
        self.memory_bytes = memory_bytes  # the Keep's limit (None: the default)
        self.agent = ClientAgent()
        self._trivial = trivial_module()

    def spec(self) -> NewKeep:
        extra = {"memory_bytes": self.memory_bytes} if self.memory_bytes else {}
        return NewKeep(backend=self.backend, manager=self.manager.url,
                       token_file=self.manager.token_file, **extra)

    def new_attested(self) -> str:
        """`%keep new` + attest with a fresh nonce; the Keep's id."""
        a = self.agent
        session = a.call(a.new_keep(self.spec()))
        a.call(a.attest())
        return session.id

    def run(self, kind: str, **kw) -> tuple[dict, list[protocol.Event]]:
        events: list[protocol.Event] = []
        status = self.agent.call(self.agent.run(kind, events.append, **kw))
        if not status.get("ok"):
            text = " ".join(str(e.content.get("evalue") or e.content.get("text") or "")
                            for e in events)
            raise RuntimeError(f"bench cell failed in the Keep: {status.get('reason')} {text[:400]}")
        return status, events

    def stdout(self, events: list[protocol.Event]) -> str:
        return "".join(e.content.get("text", "") for e in events
                       if e.kind == "stream" and e.content.get("name") == "stdout")

    def first_result(self, kind: str = "wasm") -> float:
        """Seconds from `%keep new` to the first result of a trivial cell (attest and provision
        included), then the Keep is closed (not timed)."""
        t = time.perf_counter()
        self.new_attested()
        if kind == "wasm":
            self.run("wasm", module=self._trivial, invoke="answer")
        else:
            self.run("python", code="6 * 7")
        elapsed = time.perf_counter() - t
        self.close()
        return elapsed

    def close(self) -> None:
        if self.agent.current is not None:
            self.agent.call(self.agent.close())

    def keep_pids(self, keep_id: str) -> list[int]:
        """The keepldr of this Keep (found by its --keep-id) and its wasmldr."""
        for pid in self.manager.pids():
            try:
                cmd = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
            except OSError:
                continue
            if b"keepbook.keep.host.keepldr" in cmd and keep_id.encode() in cmd:
                return [pid] + descendants(pid)
        return []

    def stop(self) -> None:
        try:
            self.agent.stop()
        except Exception:
            pass


def cell_id() -> str:
    return uuid.uuid4().hex[:12]
