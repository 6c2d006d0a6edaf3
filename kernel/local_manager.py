"""A keep manager on this machine, for this user: started as a subprocess (``python -m
keepbook.keep.host.keepmgr`` — the host's code runs in its own process; nothing of it is
imported here) and stopped with the kernel.  The one way the embedded manager, the benchmark and
the tests start one.  It announces itself through a ready file (``--ready-file``: its URL and
token file) in a private state directory, so the user never types its token."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Mapping

from keepbook.kernel.client import KeepError

READY_TIMEOUT_S = 30.0


class ManagerStartError(RuntimeError):
    pass


class ManagerProcess:
    """``keepbook keepmgr`` on loopback and a free port, with ``state_dir`` as its state dir."""

    def __init__(self, state_dir: Path, *, backends: str | None = None, extra: list[str] | None = None,
                 parent_pid: int | None = None, env: Mapping[str, str] | None = None):
        """``env``: variables set for the manager beside this process's own (a teacher's manager
        with its own ``KEEPBOOK_SIM_ROOTS``, say)."""
        self.dir = Path(state_dir)
        self.log = self.dir / "keepmgr.log"
        self.stderr = self.dir / "keepmgr.stderr"
        ready = self.dir / "ready.json"
        cmd = [sys.executable, "-m", "keepbook.keep.host.keepmgr", "--host", "127.0.0.1",
               "--port", "0", "--state-dir", str(self.dir), "--ready-file", str(ready),
               "--log-file", str(self.log)]
        if backends:
            cmd += ["--backends", backends]
        if parent_pid is not None:  # dies with its parent, even after kill -9
            cmd += ["--parent-pid", str(parent_pid)]
        with open(self.stderr, "wb") as err:
            self.proc = subprocess.Popen(cmd + list(extra or []), stdin=subprocess.DEVNULL,
                                         stdout=err, stderr=err, start_new_session=True,
                                         env={**os.environ, **env} if env else None)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not ready.exists():
            if self.proc.poll() is not None:
                tail = self.stderr.read_text(errors="replace")[-800:]
                raise ManagerStartError(f"the keep manager exited at start (code "
                                        f"{self.proc.returncode}): {tail}")
            if time.monotonic() > deadline:
                self.stop()
                raise ManagerStartError(f"the keep manager did not start within {READY_TIMEOUT_S:.0f} s")
            time.sleep(0.02)
        info = json.loads(ready.read_text())
        self.url: str = info["url"]
        # none when every user comes from a users file (``--users``) that holds only token hashes
        self.token_file: Path | None = Path(info["token_file"]) if info.get("token_file") else None
        self.token: str | None = self.token_file.read_text().strip() if self.token_file else None
        #: backend → fingerprint of the simulated root its Keeps sign with (as the manager printed)
        self.sim_roots: dict[str, str] = dict(info.get("sim_roots") or {})

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, wait_s: float = 10.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(wait_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


class EmbeddedManager:
    """The kernel's own keep manager on loopback: started on first need (or in the background at
    kernel start), its token read from its private state directory."""

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
                assert self.process.token is not None  # the embedded manager has its own token
                return self.process.url, self.process.token
            self.stop()
            self.state_dir = Path(tempfile.mkdtemp(prefix="keepbook-keepmgr-"))
            os.chmod(self.state_dir, 0o700)
            try:
                self.process = ManagerProcess(self.state_dir, backends=self.backends,
                                              parent_pid=os.getpid())
            except ManagerStartError as exc:
                raise KeepError(f"the embedded keep manager could not start: {exc}") from None
            assert self.process.token is not None
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
