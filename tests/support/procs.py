"""Find a Keep's host processes (for fault-injection tests) by reading /proc."""

from __future__ import annotations

import os
from pathlib import Path


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _ppid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def keep_pids(keep_id: str) -> tuple[int | None, int | None]:
    """(keepldr pid, wasmldr pid) of the Keep with this id."""
    keepldr = wasmldr = None
    pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    for pid in pids:
        cmd = _cmdline(pid)
        if "keepbook.keep.host.keepldr" in cmd and keep_id in cmd:
            keepldr = pid
    if keepldr is not None:
        for pid in pids:
            if _ppid(pid) == keepldr and "keepbook.keep.inside" in _cmdline(pid):
                wasmldr = pid
    return keepldr, wasmldr


def vm_pid(keep_id: str) -> int | None:
    """The QEMU process of a VM Keep (the child of its keepldr)."""
    keepldr, _ = keep_pids(keep_id)
    if keepldr is None:
        return None
    for pid in (int(p) for p in os.listdir("/proc") if p.isdigit()):
        cmd = _cmdline(pid)
        if _ppid(pid) == keepldr and cmd and cmd[0].endswith("qemu-system-x86_64"):
            return pid
    return None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
