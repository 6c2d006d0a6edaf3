"""The project's Python dependencies as image inputs: wheels for the guest's CPython (3.11,
glibc 2.36), fetched with pip into a cache, checked by SHA-256, and unpacked into the image's
site directory the way an installer would (files and ``.dist-info``; no scripts run)."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from keepbook.keep.image.debs import sha256_file

PYTHON_VERSION = "3.11"
#: every manylinux tag a glibc-2.36 x86-64 system accepts (pip does not widen --platform)
PLATFORMS = tuple(f"manylinux_2_{x}_x86_64" for x in range(36, 4, -1)) + (
    "manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64", "linux_x86_64")


class WheelError(RuntimeError):
    pass


@dataclass(frozen=True)
class LockedWheel:
    file: str
    sha256: str

    @property
    def project(self) -> str:
        return self.file.split("-")[0]


def _pip_download(args: list[str], dest: Path) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check",
           "--only-binary=:all:", "--python-version", PYTHON_VERSION, "--implementation", "cp",
           *[a for p in PLATFORMS for a in ("--platform", p)], "-d", str(dest), *args]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        lines = [ln for ln in r.stderr.splitlines() if ln.startswith("ERROR")] or r.stderr.splitlines()
        raise WheelError(f"pip cannot download the Keep's wheels: {' '.join(lines[-2:])}")


def fetch(wheels: list[LockedWheel], cache: Path) -> list[Path]:
    """The locked wheels from the cache; the missing ones downloaded (pip checks the hashes)."""
    cache.mkdir(parents=True, exist_ok=True)
    missing = [w for w in wheels if not ((cache / w.file).is_file()
                                         and sha256_file(cache / w.file) == w.sha256)]
    if missing:
        with tempfile.NamedTemporaryFile("w", suffix=".txt", dir=cache) as req:
            for w in missing:
                name, version = w.file.split("-")[:2]
                req.write(f"{name}=={version} --hash=sha256:{w.sha256}\n")
            req.flush()
            _pip_download(["--no-deps", "--require-hashes", "-r", req.name], cache)
    out = []
    for w in wheels:
        path = cache / w.file
        if not path.is_file():
            raise WheelError(f"pip did not fetch {w.file} (another file matched the pin?); "
                             "re-pin with `keepbook image lock`")
        digest = sha256_file(path)
        if digest != w.sha256:
            raise WheelError(f"{w.file} has SHA-256 {digest}, the lock says {w.sha256}")
        out.append(path)
    return out


def resolve(requirements: list[str], cache: Path) -> list[LockedWheel]:
    """Download ``requirements`` and their dependencies for the guest; lock what came."""
    with tempfile.TemporaryDirectory() as tmp:
        _pip_download(requirements, Path(tmp))
        out = []
        for f in sorted(Path(tmp).glob("*.whl")):
            target = cache / f.name
            cache.mkdir(parents=True, exist_ok=True)
            target.write_bytes(f.read_bytes())
            out.append(LockedWheel(f.name, sha256_file(target)))
        return out


def install(wheel: Path, site: Path) -> list[str]:
    """Unpack ``wheel`` into ``site`` (purelib and platlib both land there); the paths written."""
    written = []
    with zipfile.ZipFile(wheel) as zf:
        for info in sorted(zf.infolist(), key=lambda i: i.filename):
            if info.is_dir():
                continue
            rel = PurePosixPath(info.filename)
            if rel.is_absolute() or ".." in rel.parts:
                raise WheelError(f"{wheel.name}: unsafe member path {info.filename!r}")
            parts = rel.parts
            if parts[0].endswith(".data"):
                if len(parts) < 3 or parts[1] not in ("purelib", "platlib"):
                    raise WheelError(f"{wheel.name}: installs {parts[1] if len(parts) > 1 else '?'} "
                                     "files, which a Keep image does not take")
                rel = PurePosixPath(*parts[2:])
            if rel.name == "RECORD" and rel.parent.name.endswith(".dist-info"):
                continue  # lists hashes of files we may rewrite (bytecode); not needed to import
            target = site / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(zf.read(info))
            if (info.external_attr >> 16) & 0o111:
                target.chmod(0o755)
            written.append(str(rel))
    return written
