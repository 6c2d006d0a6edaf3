"""Shared fixtures: a real keep manager on loopback, and helpers to talk CBOR to it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.cells import LOOP_WAT, print_wat  # noqa: F401  (re-exported)

ROOT = Path(__file__).resolve().parents[1]


class Manager:
    def __init__(self, tmp: Path, backends: str = "nil,sim-snp,snp", extra: list[str] | None = None):
        self.dir = tmp
        ready = tmp / "ready.json"
        self.log = tmp / "keepmgr.log"
        self.stderr = tmp / "keepmgr.stderr"
        cmd = [sys.executable, "-m", "keepbook.keep.host.keepmgr", "--port", "0",
               "--state-dir", str(tmp), "--ready-file", str(ready), "--log-file", str(self.log),
               "--backends", backends] + (extra or [])
        self.proc = subprocess.Popen(cmd, stdout=open(self.stderr, "wb"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + 30
        while not ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("keepmgr did not start: " + self.stderr.read_text())
            time.sleep(0.02)
        info = json.loads(ready.read_text())
        self.url = info["url"]
        self.token_file = Path(info["token_file"])
        self.token = self.token_file.read_text().strip()

    def host_visible_text(self) -> str:
        """Everything the host's components wrote: logs and captured stdio."""
        return "".join(p.read_text(errors="replace") for p in self.dir.rglob("*") if p.is_file())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


@pytest.fixture
def manager(tmp_path):
    m = Manager(tmp_path)
    yield m
    m.stop()


@pytest.fixture(scope="module")
def shared_manager(tmp_path_factory):
    m = Manager(tmp_path_factory.mktemp("keepmgr"))
    yield m
    m.stop()


HELLO_WAT = print_wat("hello from the Keep\n")


