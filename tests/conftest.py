"""Shared fixtures: a real keep manager on loopback, and helpers to talk CBOR to it."""

from __future__ import annotations

from pathlib import Path

import pytest

from keepbook.kernel.local_manager import ManagerProcess
from tests.support.cells import LOOP_WAT, print_wat  # noqa: F401  (re-exported)

ROOT = Path(__file__).resolve().parents[1]


class Manager(ManagerProcess):
    def __init__(self, tmp: Path, backends: str = "nil,sim-snp,snp", extra: list[str] | None = None):
        super().__init__(tmp, backends=backends, extra=extra)

    def host_visible_text(self) -> str:
        """Everything the host's components wrote: logs and captured stdio."""
        return "".join(p.read_text(errors="replace") for p in self.dir.rglob("*") if p.is_file())


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


