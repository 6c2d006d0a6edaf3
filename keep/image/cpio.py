"""cpio "newc" archives — the format the Linux kernel unpacks as its initramfs — written so
that the same entries always give the same bytes: sorted paths, inode numbers counted from 1,
owner root, every mtime 0, no device numbers but the ones asked for."""

from __future__ import annotations

import stat
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

MAGIC = b"070701"
TRAILER = "TRAILER!!!"
HEADER_SIZE = 110
#: the kernel rejects nothing below this, but a file this big in an initramfs is a mistake
MAX_FILE = 1 << 31


class CpioError(ValueError):
    pass


@dataclass(frozen=True)
class Entry:
    """One archive member.  ``data`` is a file's contents or a symlink's target; ``source`` a
    file to stream the contents from instead (large files are not held in memory)."""

    path: str                    # relative, '/'-separated, no leading '/'
    mode: int                    # st_mode: file type and permission bits
    data: bytes = b""
    source: Path | None = None
    rdev: tuple[int, int] = (0, 0)

    def size(self) -> int:
        return self.source.stat().st_size if self.source is not None else len(self.data)


def _pad(n: int) -> bytes:
    return b"\0" * (-n % 4)


def _header(ino: int, mode: int, nlink: int, size: int, rdev: tuple[int, int], namesize: int) -> bytes:
    fields = (ino, mode, 0, 0, nlink, 0, size, 0, 0, rdev[0], rdev[1], namesize, 0)
    return MAGIC + b"".join(b"%08X" % f for f in fields)


def _check_path(path: str) -> None:
    parts = path.split("/")
    if not path or path.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise CpioError(f"bad archive path {path!r}: relative, no empty, '.' or '..' parts")


def write(entries: Iterable[Entry], out: BinaryIO) -> int:
    """Write ``entries`` (any order; a path twice is an error) as one newc archive with its
    trailer; return the number of bytes written."""
    by_path: dict[str, Entry] = {}
    for e in entries:
        _check_path(e.path)
        if e.path in by_path:
            raise CpioError(f"{e.path} is in the archive twice")
        by_path[e.path] = e
    written = 0
    for ino, path in enumerate(sorted(by_path), start=1):
        e = by_path[path]
        size = e.size()
        if size > MAX_FILE:
            raise CpioError(f"{path} is {size} bytes: too big for an initramfs")
        written += _member(out, ino, e.mode, 2 if stat.S_ISDIR(e.mode) else 1, path, e, size)
    written += _member(out, 0, 0, 1, TRAILER, Entry(TRAILER, 0), 0)
    return written


def _member(out: BinaryIO, ino: int, mode: int, nlink: int, path: str, e: Entry, size: int) -> int:
    name = path.encode() + b"\0"
    head = _header(ino, mode, nlink, size, e.rdev, len(name)) + name
    out.write(head + _pad(len(head)))
    if e.source is not None:
        with open(e.source, "rb") as fh:
            copied = 0
            while chunk := fh.read(1 << 20):
                out.write(chunk)
                copied += len(chunk)
        if copied != size:
            raise CpioError(f"{e.source} changed size while it was archived")
    else:
        out.write(e.data)
    out.write(_pad(size))
    return len(head) + len(_pad(len(head))) + size + len(_pad(size))


def read(data: bytes) -> Iterator[tuple[str, int, int, bytes]]:
    """(path, mode, mtime, data) of each member up to the trailer — for checking archives."""
    pos = 0
    while True:
        if data[pos:pos + 6] != MAGIC:
            raise CpioError(f"no newc header at offset {pos}")
        try:
            f = [int(data[pos + 6 + 8 * i: pos + 14 + 8 * i], 16) for i in range(13)]
        except ValueError:
            raise CpioError(f"corrupt newc header at offset {pos}") from None
        mode, mtime, size, namesize = f[1], f[5], f[6], f[11]
        name_end = pos + HEADER_SIZE + namesize
        name = data[pos + HEADER_SIZE:name_end - 1].decode()
        body = name_end + (-name_end % 4)
        if name == TRAILER:
            return
        if body + size > len(data):
            raise CpioError(f"{name}: archive ends inside the member")
        yield name, mode, mtime, data[body:body + size]
        pos = body + size + (-(body + size) % 4)
