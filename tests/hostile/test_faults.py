"""Faults, through a real kernel (jupyter_client): kill -9 of keepldr / wasmldr / keepmgr mid-cell
and between cells, a Keep that stops answering (SIGSTOP), the network cut in the middle of a
cell's output stream, and a full disk under the manager's state directory.

Each must end in a clear notebook error within 2 s, leave the kernel alive, let `%keep new`
recover, and never report a cell as succeeded when it did not run.  (tests/kernel/
test_kernel_behaviour.py already covers wasmldr killed mid-cell and keepldr killed between
cells; they are not repeated here.)"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from typing import Callable

import pytest

from keepbook.keep.shared import protocol as p
from tests.conftest import Manager
from tests.hostile.netproxy import CuttingProxy
from tests.hostile.report import record
from tests.support.cells import LOOP_WAT, print_wat
from tests.kernel.kernel_client import Kernel, Result, keep_id
from tests.support.procs import _cmdline, keep_pids
from tests.support.tamper import TamperingManager

LIMIT_S = 2.0
LOOP = "%%wat\n" + LOOP_WAT
HELLO = "%%wat\n" + print_wat("still alive\n")
# Writes 4 KiB lines forever: an output stream that is always in flight.
FLOOD = '''%%wat
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (memory.fill (i32.const 64) (i32.const 120) (i32.const 4096))
    (i32.store8 (i32.const 4159) (i32.const 10))
    (i32.store (i32.const 0) (i32.const 64)) (i32.store (i32.const 4) (i32.const 4096))
    (loop $l (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))) (br $l))))'''


@pytest.fixture(scope="module")
def kernel():
    k = Kernel()
    yield k
    k.close()




def kernel_pid(kernel: Kernel) -> int:
    return kernel.km.provisioner.process.pid  # type: ignore[union-attr]


def embedded_manager_pid(kernel: Kernel) -> int:
    want = str(kernel_pid(kernel))
    for pid in (int(x) for x in os.listdir("/proc") if x.isdigit()):
        cmd = _cmdline(pid)
        if "keepbook.keep.host.keepmgr" in cmd and "--parent-pid" in cmd \
                and cmd[cmd.index("--parent-pid") + 1] == want:
            return pid
    raise AssertionError("no embedded keep manager for this kernel")


def fault_during(kernel: Kernel, code: str, fault: Callable[[], None], delay: float = 1.0,
                 timeout: float = 30) -> tuple[Result, float]:
    """Run ``code``; ``delay`` s after it starts, inject ``fault``.  Returns the result and the
    seconds from the fault to the cell's reply."""
    at: list[float] = []

    def inject() -> None:
        time.sleep(delay)
        fault()
        at.append(time.monotonic())
    t = threading.Thread(target=inject)
    t.start()
    res = kernel.execute(code, timeout=timeout)
    done = time.monotonic()
    t.join()
    return res, done - at[0]


def timed(kernel: Kernel, code: str, timeout: float = 30) -> tuple[Result, float]:
    started = time.monotonic()
    res = kernel.execute(code, timeout=timeout)
    return res, time.monotonic() - started


def did_not_succeed(res: Result) -> str:
    """The cell is reported as failed, with a clear (non-traceback) reason; returns the text."""
    assert res.status == "error", res.text()
    assert "still alive" not in res.stream("stdout")
    errors = res.errors()
    assert errors, "an error must be shown in the notebook"
    text = " ".join(e["evalue"] for e in errors)
    assert "Traceback" not in text and "internal error" not in text, text
    return text


def recovers(kernel: Kernel, *args: str) -> None:
    new = kernel.execute(" ".join(["%keep new --backend nil", *args]), timeout=60)
    assert new.status == "ok", new.text()
    again = kernel.execute(HELLO, timeout=60)
    assert again.status == "ok" and "still alive" in again.stream("stdout"), again.text()


def fresh_keep(kernel: Kernel) -> tuple[str, int, int]:
    assert kernel.execute("%keep new --backend nil").status == "ok"
    assert "still alive" in kernel.execute(HELLO).stream("stdout")   # attested, channel open
    kid = keep_id(kernel)
    keepldr, wasmldr = keep_pids(kid)
    assert keepldr and wasmldr
    return kid, keepldr, wasmldr


def survived(name: str, elapsed: float) -> None:
    record("fault", name, ok=elapsed < LIMIT_S, seconds=round(elapsed, 3))


# ---------------------------------------------------------------- kill -9


def test_keepldr_killed_mid_cell(kernel):
    _, keepldr, wasmldr = fresh_keep(kernel)
    res, elapsed = fault_during(kernel, LOOP, lambda: os.kill(keepldr, signal.SIGKILL))
    text = did_not_succeed(res)
    assert "unknown" in text or "lost" in text, text
    survived("keepldr kill -9 mid-cell", elapsed)
    recovers(kernel)
    assert elapsed < LIMIT_S, elapsed


def test_wasmldr_killed_between_cells(kernel):
    _, _, wasmldr = fresh_keep(kernel)
    os.kill(wasmldr, signal.SIGKILL)
    res, elapsed = timed(kernel, HELLO)
    text = did_not_succeed(res)
    assert "Keep" in text, text
    survived("wasmldr kill -9 between cells", elapsed)
    assert elapsed < LIMIT_S, (elapsed, text)
    recovers(kernel)


def test_keepmgr_killed_mid_cell(kernel):
    fresh_keep(kernel)
    mgr_pid = embedded_manager_pid(kernel)
    res, elapsed = fault_during(kernel, LOOP, lambda: os.kill(mgr_pid, signal.SIGKILL))
    text = did_not_succeed(res)
    survived("keepmgr kill -9 mid-cell", elapsed)
    recovers(kernel)                 # the embedded manager is started again
    assert elapsed < LIMIT_S, (elapsed, text)


def test_keepmgr_killed_between_cells(kernel):
    fresh_keep(kernel)
    mgr_pid = embedded_manager_pid(kernel)
    os.kill(mgr_pid, signal.SIGKILL)
    time.sleep(0.5)
    res, elapsed = timed(kernel, HELLO)
    text = did_not_succeed(res)
    survived("keepmgr kill -9 between cells", elapsed)
    assert elapsed < LIMIT_S, (elapsed, text)
    recovers(kernel)


# ---------------------------------------------------------------- a Keep that stops answering


def _stop_then_kill(pid: int) -> Callable[[], None]:
    def stop() -> None:
        os.kill(pid, signal.SIGSTOP)

        def unblock() -> None:  # never leave a stopped process (or a hung test) behind
            time.sleep(LIMIT_S + 4)
            try:
                os.kill(pid, signal.SIGKILL)
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        threading.Thread(target=unblock, daemon=True).start()
    return stop


def test_keep_stops_answering_mid_cell(kernel):
    _, _, wasmldr = fresh_keep(kernel)
    res, elapsed = fault_during(kernel, LOOP, _stop_then_kill(wasmldr))
    did_not_succeed(res)
    survived("Keep stopped (SIGSTOP) mid-cell", elapsed)
    assert elapsed < LIMIT_S, elapsed


def test_keep_stops_answering_between_cells(kernel):
    _, _, wasmldr = fresh_keep(kernel)
    _stop_then_kill(wasmldr)()
    res, elapsed = timed(kernel, HELLO)
    did_not_succeed(res)
    survived("Keep stopped (SIGSTOP) between cells", elapsed)
    assert elapsed < LIMIT_S, elapsed


def test_after_a_stopped_keep_the_kernel_recovers(kernel):
    """Whatever the timing above, once the stopped Keep is gone `%keep new` works."""
    recovers(kernel)


# ---------------------------------------------------------------- network cut mid-stream


def test_network_cut_mid_stream(kernel, mgr, token_file):
    """The host's network closes the TCP connection in the middle of a cell's output stream.
    The client reached the Keep through the host's proxy (endpoint rewritten in the provisioning
    answer), and TLS still pinned the Keep's certificate end to end."""
    proxies: list[CuttingProxy] = []

    def via_proxy(method, path, body, status):
        if path.endswith("/provision") and status == 200:
            resp = p.ProvisionResponse.from_cbor(body)
            host, port = resp.endpoint.removeprefix("https://").rsplit(":", 1)
            proxy = CuttingProxy(host, int(port), cut_after=256 * 1024)
            proxies.append(proxy)
            resp.endpoint = f"https://127.0.0.1:{proxy.port}"
            return resp.to_cbor(), status
        return body, status
    manager = TamperingManager(mgr.url, via_proxy)
    try:
        assert kernel.execute(f"%keep new --backend nil --manager {manager.url} "
                              f"--token-file {token_file}").status == "ok"
        assert "still alive" in kernel.execute(HELLO).stream("stdout")  # through the proxy
        proxy = proxies[0]
        started = time.monotonic()
        res = kernel.execute(FLOOD, timeout=30)
        elapsed = time.monotonic() - started
        text = did_not_succeed(res)
        assert proxy.cuts >= 1, "the proxy must have cut the stream"
        assert "unknown" in text or "lost" in text, text
        assert b"xxxx" not in bytes(proxy.seen), "the output crossed the host's network in clear"
        survived("network cut mid-stream", elapsed)
        assert elapsed < LIMIT_S + 1.0, elapsed    # the flood itself takes a moment to reach 256 KiB
        # the Keep noticed the client went away and stopped the cell: the same Keep is usable
        proxy.cut_after = None
        cut_at = time.monotonic()
        again = kernel.execute(HELLO, timeout=30)
        while "already running" in again.text() and time.monotonic() - cut_at < LIMIT_S:
            time.sleep(0.2)
            again = kernel.execute(HELLO, timeout=30)
        assert again.status == "ok" and "still alive" in again.stream("stdout"), again.text()
        recovers(kernel)
    finally:
        manager.close()
        for proxy in proxies:
            proxy.close()


# ---------------------------------------------------------------- disk full


@pytest.fixture
def full_disk(tmp_path):
    """A 64 KiB tmpfs as the manager's state dir (needs root; skipped with the reason if not)."""
    mnt = tmp_path / "state"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tiny tmpfs for the disk-full test: {r.stderr.strip() or r.returncode}")

    def fill() -> None:
        # tmpfs hands out whole pages: fill the free pages, then the slack in the last page of
        # every file already there (the manager's log), as other writers on a full disk would.
        for name in ["filler", *sorted(f.name for f in mnt.iterdir() if f.name != "filler")]:
            with open(mnt / name, "ab", buffering=0) as fh:
                for size in (1024, 1):
                    try:
                        while True:
                            fh.write(b"\0" * size)
                    except OSError:
                        pass

    def free() -> None:
        (mnt / "filler").unlink(missing_ok=True)
    yield mnt, fill, free
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def disk_full_scenario(kernel, full_disk, tmp_path, check) -> None:
    """A Keep made before the disk filled keeps working; then `%keep new` on the full manager;
    ``check(result, elapsed, manager)`` judges it; finally space comes back and `%keep new` works."""
    mnt, fill, free = full_disk
    m = Manager(mnt, backends="nil")
    tf = tmp_path / "tok"
    tf.write_text(m.token + "\n")
    new = f"%keep new --backend nil --manager {m.url} --token-file {tf}"
    try:
        assert kernel.execute(new).status == "ok"
        assert "still alive" in kernel.execute(HELLO).stream("stdout")
        fill()
        res = kernel.execute(HELLO)
        assert res.status == "ok" and "still alive" in res.stream("stdout"), res.text()
        res, elapsed = timed(kernel, new)
        check(res, elapsed, m)
        assert m.proc.poll() is None, "the manager must survive a full disk"
        free()
        recovers(kernel, f"--manager {m.url} --token-file {tf}")
    finally:
        free()
        m.stop()


def test_disk_full_in_manager_state_dir(kernel, full_disk, tmp_path):
    def check(res, elapsed, m):
        did_not_succeed(res)
        survived("disk full in the manager's state dir", elapsed)
        assert elapsed < LIMIT_S, elapsed
    disk_full_scenario(kernel, full_disk, tmp_path, check)


def test_disk_full_error_names_the_cause(kernel, full_disk, tmp_path):
    def check(res, elapsed, m):
        text = did_not_succeed(res)
        assert "unreadable" not in text and ("space" in text or "disk" in text), text
    disk_full_scenario(kernel, full_disk, tmp_path, check)


def test_disk_full_leaves_no_orphan_keep(kernel, full_disk, tmp_path):
    from tests.support.http import http

    def check(res, elapsed, m):
        did_not_succeed(res)
        keeps = p.KeepList.from_cbor(http("GET", m.url + "/v1/keeps", token=m.token)[1]).keeps
        stuck = [k.id for k in keeps if k.state == "starting"]
        record("leak", "orphan Keep after a failed create (disk full)", ok=not stuck)
        assert not stuck, stuck
    disk_full_scenario(kernel, full_disk, tmp_path, check)
