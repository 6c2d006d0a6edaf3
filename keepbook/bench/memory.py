"""Memory of an idle Keep with a live Python session: resident set of its keepldr + wasmldr,
and how many such Keeps this machine holds.  Baseline: an idle local ipykernel's RSS.

RSS counts shared pages (the memory-mapped compiled interpreter, Python's shared libraries) in
every process, so it overstates what each extra Keep costs; PSS and the drop of MemAvailable per
extra Keep (full run) are reported alongside.  The capacity is an estimate: MemAvailable divided
by the per-Keep cost, not a test that fills the machine."""

from __future__ import annotations

import os
import subprocess
import time

from .core import Row, Sample, goal
from .lab import Lab, Manager, pss_bytes, rss_bytes
from .machine import meminfo

MB = 1e6
IDLE_S = 2.0


def _ipykernel_mem() -> tuple[float, float]:
    """(RSS, PSS) of an idle local ipykernel, in MB."""
    from jupyter_client.manager import start_new_kernel

    from .startup import execute

    km, kc = start_new_kernel(kernel_name="python3", stderr=subprocess.DEVNULL)
    try:
        execute(kc, "x = 6 * 7")
        time.sleep(IDLE_S)
        pid = km.provisioner.process.pid
        return rss_bytes(pid) / MB, pss_bytes(pid) / MB
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def _python_keep(lab: Lab) -> str:
    """A new attested Keep whose Python session has run one cell (its id)."""
    a = lab.agent
    session = a.call(a.new_keep(lab.spec()))
    a.call(a.attest())
    lab.run("python", code="x = 6 * 7")
    return session.id


def keep_files_bytes(pids: list[int]) -> int:
    """Bytes of the Keep's memory-backed files (its private folder, KEEPBOOK_KEEP_DIR: the
    interpreter's private copy of its stdlib zip, the staged IPython, the session's /tmp): RAM
    that neither RSS nor PSS counts."""
    for pid in pids:
        try:
            env = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
        except OSError:
            continue
        for item in env:
            if item.startswith(b"KEEPBOOK_KEEP_DIR="):
                root = item.split(b"=", 1)[1].decode()
                total = 0
                for d, _dirs, files in os.walk(root):
                    for f in files:
                        try:
                            total += os.lstat(os.path.join(d, f)).st_blocks * 512
                        except OSError:
                            pass
                return total
    return 0


def rows(reps: int, confirm: int, backend: str = "sim-snp") -> tuple[list[Row], dict]:
    mgr = Manager(backends=backend)
    lab = Lab(mgr, backend)
    rss, pss, files = Sample(), Sample(), Sample()
    extra: dict = {}
    try:
        # one other idle Python Keep stays up meanwhile, as on a machine that runs several: the
        # pages Keeps share (the one mapped compiled interpreter, libraries) count 1/n in PSS
        neighbour = _python_keep(lab)
        lab.agent.current = None
        for _ in range(max(1, reps)):
            keep_id = _python_keep(lab)
            time.sleep(IDLE_S)
            pids = lab.keep_pids(keep_id)
            rss.add(sum(rss_bytes(p) for p in pids) / MB)
            pss.add(sum(pss_bytes(p) for p in pids) / MB)
            files.add(keep_files_bytes(pids) / MB)
            lab.close()
        lab.agent.call(lab.agent.close(neighbour))
        marginal = None
        if confirm:
            time.sleep(1.0)
            before = meminfo().get("MemAvailable", 0)
            for _ in range(confirm):
                _python_keep(lab)
            time.sleep(IDLE_S)
            after = meminfo().get("MemAvailable", 0)
            marginal = (before - after) / confirm / MB
            # all of them at once, each with its live session: do they all still answer?
            answered = 0
            for sess in list(lab.agent.sessions.values()):
                lab.agent.current = sess
                _, events = lab.run("python", code="x")
                answered += any(e.kind == "execute_result" for e in events)
            extra = {"keeps_started": confirm, "keeps_answering": answered,
                     "mem_available_drop_mb_per_keep": round(marginal, 1)}
            for sess in list(lab.agent.sessions.values()):
                lab.agent.call(sess.close())
    finally:
        lab.stop()
        mgr.stop()
    base, base_pss = _ipykernel_mem()
    avail = meminfo().get("MemAvailable", 0) / MB
    per_keep = marginal if marginal else (pss.median or 0) + (files.median or 0)
    capacity = int(avail // per_keep) if per_keep else None
    ipy_capacity = int(avail // base) if base else None
    rows_ = [
        Row("idle_python_keep_mb", "MB", rss, base, goal("idle_python_keep_mb"),
            baseline_label="RSS of an idle local ipykernel after `x = 6 * 7`",
            note=f"RSS of keepldr + wasmldr, {IDLE_S:.0f} s after one Python cell (counts "
                 "every page the Keep maps, shared ones too)"),
        Row("idle_python_keep_pss_mb", "MB", pss, base_pss, goal("idle_python_keep_pss_mb"),
            baseline_label="PSS of an idle local ipykernel after `x = 6 * 7`",
            note=f"PSS of keepldr + wasmldr, {IDLE_S:.0f} s after one Python cell, beside one "
                 f"other idle Python Keep: a page shared by n processes counts 1/n (the one mapped "
                 f"compiled interpreter, shared libraries), so this is closer to what one more "
                 f"Keep costs than RSS. Not in it: the Keep's memory-backed files, "
                 f"{files.median or 0:.0f} MB (the interpreter's private stdlib copy, the staged "
                 f"IPython)"),
        Row("python_keeps_capacity", "Keeps", float(capacity) if capacity else None,
            float(ipy_capacity) if ipy_capacity else None, goal("python_keeps_capacity"),
            baseline_label="idle ipykernels that fit the same MemAvailable",
            note=f"ESTIMATE: MemAvailable {avail:.0f} MB / {per_keep:.0f} MB per Keep ("
                 + (f"measured MemAvailable drop over {confirm} Keeps started at once, of which "
                    f"{extra.get('keeps_answering')} then answered a cell from their live session"
                    if marginal else "PSS + memory-backed files per Keep") + ")"),
    ]
    return rows_, extra
