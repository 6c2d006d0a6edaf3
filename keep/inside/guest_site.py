"""The read-only folder the Keep's Python imports from: keepbook's guest modules and the
third-party files listed in ``guest_packages.py`` (IPython and what it imports).  Inside the Keep.

Staged once per Keep process into a private folder (inside the Keep's own folder, which its
loader removes even when the Keep is killed), granted to every Python session of the Keep
read-only at :data:`GUEST_ROOT`, and removed when the process exits.  Each file is
read once; the digest of the bytes written must equal the one that went into the Keep's
measurement, else staging fails closed (a file changed after the Keep was measured).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import threading
from importlib import resources
from pathlib import Path

from keepbook.keep.shared import guest_packages

GUEST_ROOT = "/opt/keep"  # where the guest sees the folder
GUEST_SITE = f"{GUEST_ROOT}/site"  # on the guest's sys.path
GUEST_PACKAGE = "_keep_guest"  # keepbook's own guest modules, as the guest imports them
GUEST_PYCACHE = "/opt/keep-pycache"  # sys.pycache_prefix in the guest (see pycache_dir)

_lock = threading.Lock()
_staged: Path | None = None
_pycache: Path | None = None


class StagingFailed(RuntimeError):
    """The guest's files could not be staged as measured."""


def _keep_dir() -> str | None:
    """The Keep's own folder, made and removed by its loader (also when the Keep is killed)."""
    given = os.environ.get("KEEPBOOK_KEEP_DIR")
    return given if given and os.path.isdir(given) else None


def _guest_modules() -> list[tuple[str, bytes]]:
    pkg = resources.files("keepbook.keep.inside.guest")
    out = []
    for entry in pkg.iterdir():
        if entry.name.endswith(".py"):
            out.append((f"{GUEST_PACKAGE}/{entry.name}", entry.read_bytes()))
    return sorted(out)


def _write(root: Path, rel: str, data: bytes) -> None:
    dest = root / "site" / rel
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(data)


def host_dir() -> Path:
    """The staged folder (made on first use; the same for every session of this process)."""
    global _staged
    with _lock:
        if _staged is not None and _staged.is_dir():
            return _staged
        guest_packages.require()
        root = Path(tempfile.mkdtemp(prefix="keepbook-pysite-", dir=_keep_dir()))
        try:
            h = guest_packages.hasher()
            for rel, path in guest_packages.files():
                data = path.read_bytes()
                guest_packages.add(h, rel, data)
                _write(root, rel, data)
            if h.hexdigest() != guest_packages.digest():
                raise StagingFailed("the Python packages the Keep stages (IPython and its "
                                    "dependencies) changed after the Keep was measured; "
                                    "restart the Keep")
            for rel, data in _guest_modules():
                _write(root, rel, data)
            for d, _dirs, _files in os.walk(root):
                os.chmod(d, 0o500)
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise
        _staged = root
        atexit.register(_remove, root)
        return root


def pycache_dir() -> Path:
    """Where the guest's compiled bytecode of the staged files is kept, once per process.

    Compiling IPython's sources is most of a session's start (≈1 s of ≈1.2 s).  A pooled Keep
    fills this folder while it waits for its client (``pysession.warm``, before any cell: the
    bytecode is made by the Keep's own interpreter from the measured sources); sessions read it
    through a read-only grant.  A Keep that was not prewarmed simply compiles as it imports."""
    global _pycache
    with _lock:
        if _pycache is None or not _pycache.is_dir():
            _pycache = Path(tempfile.mkdtemp(prefix="keepbook-pycache-", dir=_keep_dir()))
            atexit.register(_remove, _pycache)
        return _pycache


def _remove(root: Path) -> None:
    for d, _dirs, _files in os.walk(root):
        try:
            os.chmod(d, 0o700)
        except OSError:
            pass
    shutil.rmtree(root, ignore_errors=True)
