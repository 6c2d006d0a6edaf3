"""Fixtures for the evidence tests: the real vectors (KEEPBOOK_VECTORS) and private simulated roots."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def vectors_dir() -> Path:
    return Path(os.environ.get("KEEPBOOK_VECTORS", PROJECT_ROOT.parent / "shared" / "vectors"))


@pytest.fixture(scope="session")
def vectors() -> Path:
    d = vectors_dir()
    if not (d / "PROVENANCE.md").exists():
        pytest.skip(f"real attestation vectors not found at {d} (set KEEPBOOK_VECTORS to the "
                    f"shared/vectors folder to run these tests)")
    return d


@pytest.fixture(scope="session")
def vec(vectors):
    """vec('snp/<file>') → bytes; hex-text files are decoded."""
    def read(rel: str) -> bytes:
        data = (vectors / rel).read_bytes()
        if rel.endswith(".hex"):
            data = bytes.fromhex(data.decode().strip())
        return data
    return read


@pytest.fixture(scope="session", autouse=True)
def _private_sim_roots(tmp_path_factory):
    """Simulated roots in a temporary folder, so tests never touch the user's real ones."""
    old = os.environ.get("KEEPBOOK_SIM_ROOTS")
    os.environ["KEEPBOOK_SIM_ROOTS"] = str(tmp_path_factory.mktemp("sim-roots"))
    from keepbook.keep.inside.simulated_tee import vendor
    vendor.reset_cache()
    yield
    if old is None:
        os.environ.pop("KEEPBOOK_SIM_ROOTS", None)
    else:
        os.environ["KEEPBOOK_SIM_ROOTS"] = old
    vendor.reset_cache()
