"""Debian packages as image inputs: fetched with apt into a cache, checked by SHA-256, and read
straight from the .deb (an ``ar`` archive holding ``data.tar.*``) — no dpkg, no root, no
maintainer scripts run."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from keepbook.keep.shared.vm_image import file_sha256 as sha256_file

AR_MAGIC = b"!<arch>\n"


class DebError(RuntimeError):
    pass


@dataclass(frozen=True)
class LockedDeb:
    name: str
    version: str
    sha256: str

    @property
    def filename(self) -> str:
        # apt's own naming (an epoch's ':' is written %3a)
        return f"{self.name}_{self.version.replace(':', '%3a')}_{'amd64'}.deb"


def cached(deb: LockedDeb, cache: Path) -> Path | None:
    """The cached .deb of ``deb`` if its SHA-256 is the locked one."""
    for arch in ("amd64", "all"):
        path = cache / deb.filename.replace("_amd64.deb", f"_{arch}.deb")
        if path.is_file() and sha256_file(path) == deb.sha256:
            return path
    return None


def fetch(deb: LockedDeb, cache: Path) -> Path:
    """The locked package from the cache, or downloaded with ``apt-get download`` and checked."""
    hit = cached(deb, cache)
    if hit is not None:
        return hit
    if shutil.which("apt-get") is None:
        raise DebError(f"{deb.name} {deb.version} is not in the cache ({cache}) and there is no "
                       "apt-get here to download it (the Keep image is built from Debian packages)")
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".download-") as tmp:
        os.chmod(tmp, 0o755)  # apt's unprivileged downloader must be able to write here
        r = subprocess.run(["apt-get", "download", "-q", f"{deb.name}={deb.version}"], cwd=tmp,
                           capture_output=True, text=True)
        got = [p for p in Path(tmp).iterdir() if p.suffix == ".deb"]
        if r.returncode != 0 or len(got) != 1:
            why = (r.stderr.strip().splitlines() or ["no file"])[-1]
            raise DebError(f"apt-get cannot download {deb.name} {deb.version}: {why}.  If Debian "
                           "no longer carries that version, re-pin the inputs with `keepbook image "
                           "lock` (this changes the image digest)")
        digest = sha256_file(got[0])
        if digest != deb.sha256:
            raise DebError(f"{got[0].name} has SHA-256 {digest}, the lock says {deb.sha256}: "
                           "refusing a package that is not the locked one")
        target = cache / got[0].name
        os.replace(got[0], target)
        return target


def _ar_members(data: bytes) -> Iterator[tuple[str, bytes]]:
    if not data.startswith(AR_MAGIC):
        raise DebError("not a Debian package (no ar header)")
    pos = len(AR_MAGIC)
    while pos + 60 <= len(data):
        head = data[pos:pos + 60]
        if head[58:60] != b"`\n":
            raise DebError(f"corrupt ar member header at offset {pos}")
        name = head[:16].decode().strip().rstrip("/")
        size = int(head[48:58].decode().strip())
        yield name, data[pos + 60:pos + 60 + size]
        pos += 60 + size + (size % 2)


def data_tar(deb_path: Path) -> tarfile.TarFile:
    """The package's file tree (``data.tar.xz``/``.gz``/uncompressed)."""
    for name, body in _ar_members(deb_path.read_bytes()):
        if name.startswith("data.tar"):
            if name.endswith(".zst"):
                raise DebError(f"{deb_path.name}: zstd-compressed data.tar is not supported")
            return tarfile.open(fileobj=io.BytesIO(body), mode="r:*")
    raise DebError(f"{deb_path.name} has no data.tar member")


def apt_candidate(name: str) -> tuple[str, str, list[str]]:
    """(version, SHA-256, dependency names) of apt's candidate for ``name``, for re-locking."""
    r = subprocess.run(["apt-cache", "show", "--no-all-versions", name], capture_output=True,
                       text=True)
    if r.returncode != 0 or not r.stdout.strip():
        raise DebError(f"apt knows no package {name!r} ({r.stderr.strip() or 'no record'}); "
                       "run `apt-get update` or fix the package list in keep/image/lock.py")
    fields: dict[str, str] = {}
    for line in r.stdout.split("\n\n")[0].splitlines():
        if line[:1] not in (" ", "\t") and ":" in line:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    deps = [d.split("(")[0].split("|")[0].strip()
            for d in (fields.get("Depends", "") + "," + fields.get("Pre-Depends", "")).split(",")
            if d.strip()]
    return fields["Version"], fields["SHA256"], deps
