"""Start a keep manager as a subprocess and wait until it listens — the one way the embedded
manager, the benchmark and the tests start one.  It announces itself through a ready file
(``--ready-file``: its URL and token file) in a private state directory."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

READY_TIMEOUT_S = 30.0


class ManagerStartError(RuntimeError):
    pass


class ManagerProcess:
    """``keepbook keepmgr`` on loopback and a free port, with ``state_dir`` as its state dir."""

    def __init__(self, state_dir: Path, *, backends: str | None = None, extra: list[str] | None = None,
                 parent_pid: int | None = None):
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
                                         stdout=err, stderr=err, start_new_session=True)
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
        self.token_file = Path(info["token_file"])
        self.token = self.token_file.read_text().strip()

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
