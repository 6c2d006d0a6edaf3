"""The embedded keep manager: started on loopback on a free port, as a subprocess of the kernel,
and stopped with it.  Its bearer token reaches the kernel through a private state directory, so
the user never types it."""

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

from keepbook.kernel.client import KeepError

READY_TIMEOUT_S = 30.0


class EmbeddedManager:
    def __init__(self, backends: str | None = None):
        self.backends = backends
        self.proc: subprocess.Popen | None = None
        self.url: str | None = None
        self.token: str | None = None
        self.state_dir: Path | None = None
        self.log_path: Path | None = None
        self._lock = threading.Lock()

    def start(self) -> tuple[str, str]:
        with self._lock:  # the kernel prestarts it in the background; callers wait for that one
            return self._start()

    def _start(self) -> tuple[str, str]:
        if self.proc is not None and self.proc.poll() is None and self.url and self.token:
            return self.url, self.token
        self.state_dir = Path(tempfile.mkdtemp(prefix="keepbook-keepmgr-"))
        os.chmod(self.state_dir, 0o700)
        ready = self.state_dir / "ready.json"
        self.log_path = self.state_dir / "keepmgr.log"
        cmd = [sys.executable, "-m", "keepbook.keep.host.keepmgr", "--host", "127.0.0.1",
               "--port", "0", "--state-dir", str(self.state_dir), "--ready-file", str(ready),
               "--log-file", str(self.log_path), "--parent-pid", str(os.getpid())]
        if self.backends:
            cmd += ["--backends", self.backends]
        errlog = open(self.state_dir / "keepmgr.stderr", "wb")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=errlog, stderr=errlog,
                                     start_new_session=True)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if ready.exists():
                info = json.loads(ready.read_text())
                self.url = info["url"]
                self.token = Path(info["token_file"]).read_text().strip()
                return self.url, self.token
            if self.proc.poll() is not None:
                tail = (self.state_dir / "keepmgr.stderr").read_text(errors="replace")[-800:]
                raise KeepError(f"the embedded keep manager exited at start (code {self.proc.returncode}): {tail}")
            time.sleep(0.02)
        self.stop()
        raise KeepError(f"the embedded keep manager did not start within {READY_TIMEOUT_S:.0f} s")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None
        if self.state_dir is not None:
            shutil.rmtree(self.state_dir, ignore_errors=True)
            self.state_dir = None
