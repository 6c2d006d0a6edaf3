"""The embedded keep manager: started on loopback on a free port, as a subprocess of the kernel,
and stopped with it.  Its bearer token reaches the kernel through a private state directory, so
the user never types it."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from pathlib import Path

from keepbook.keep.host.launch import ManagerProcess, ManagerStartError
from keepbook.kernel.client import KeepError


class EmbeddedManager:
    def __init__(self, backends: str | None = None):
        self.backends = backends
        self.process: ManagerProcess | None = None
        self.state_dir: Path | None = None
        self._lock = threading.Lock()

    @property
    def proc(self):  # the keepmgr's Popen (tests and tools look for its pid)
        return self.process.proc if self.process is not None else None

    @property
    def url(self) -> str | None:
        return self.process.url if self.process is not None else None

    @property
    def log_path(self) -> Path | None:
        return self.process.log if self.process is not None else None

    def start(self) -> tuple[str, str]:
        with self._lock:  # the kernel prestarts it in the background; callers wait for that one
            if self.process is not None and self.process.alive():
                return self.process.url, self.process.token
            self.stop()
            self.state_dir = Path(tempfile.mkdtemp(prefix="keepbook-keepmgr-"))
            os.chmod(self.state_dir, 0o700)
            try:
                self.process = ManagerProcess(self.state_dir, backends=self.backends,
                                              parent_pid=os.getpid())
            except ManagerStartError as exc:
                raise KeepError(f"the embedded keep manager could not start: {exc}") from None
            return self.process.url, self.process.token

    def alive(self) -> bool:
        return self.process is not None and self.process.alive()

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(wait_s=5)
            self.process = None
        if self.state_dir is not None:
            shutil.rmtree(self.state_dir, ignore_errors=True)
            self.state_dir = None
