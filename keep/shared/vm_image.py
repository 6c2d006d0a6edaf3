"""The Keep image on disk, and the launch parameters its measurement depends on — shared by
the builder (writes it), the host's launcher (boots it) and the client (computes what a Keep
booted from it must measure).  No secrets; standard library only.

An image directory holds ``vmlinuz``, ``initrd.img``, ``cmdline`` and ``image.json`` (the
manifest: the digests of the three and every input that went in).  The image digest is

    SHA-256("keepbook-image/v1\\nkernel <sha256>\\ninitrd <sha256>\\ncmdline <text>\\n")
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from keepbook.keep.shared.facts import VM_BACKENDS

KERNEL, INITRD, CMDLINE, MANIFEST = "vmlinuz", "initrd.img", "cmdline", "image.json"
FORMAT = "keepbook-image/v1"
ENV_DIR = "KEEPBOOK_IMAGE_DIR"

#: QEMU user-mode networking: the guest's fixed address, and the port its wasmldr listens on
GUEST_ADDRESS = "10.0.2.15"
GUEST_GATEWAY = "10.0.2.2"
GUEST_PORT = 8443
#: the virtio-serial port that carries the control frames (name seen by the guest)
CONTROL_PORT = "org.keepbook.control"
#: the kernel arguments that name the backend and the image
BACKEND_ARG = "keepbook.backend"
IMAGE_ARG = "keepbook.image"
#: how long a VM Keep may take from QEMU's start to the wasmldr's "booted" (software emulation
#: on a busy 2-core machine takes 15–40 s); the keep manager waits this long plus a margin,
#: and the client's 90 s per manager request still covers it
VM_BOOT_TIMEOUT_S = 80.0

#: the SEV-SNP launch the client computes a measurement for (the launcher uses the same)
SNP_VCPUS = 1
SNP_VCPU_TYPE = "EPYC-v4"
SNP_GUEST_FEATURES = 0x1      # SNPActive only (QEMU's default for sev-snp-guest)
SNP_POLICY = 0x30000          # SMT allowed, reserved bit 17 set; debug and migration agent off
#: the SEV-SNP guest firmware: OVMF built from edk2's OvmfPkg/AmdSev/AmdSevX64.dsc (the build
#: that checks the kernel hashes); host and client must use the same file
SNP_OVMF_ENV = "KEEPBOOK_SNP_OVMF"
SNP_OVMF_DEFAULT = "/usr/share/ovmf/OVMF.amdsev.fd"


def snp_ovmf_path(given: str | None = None) -> Path:
    return Path(given or os.environ.get(SNP_OVMF_ENV) or SNP_OVMF_DEFAULT).expanduser()


class ImageError(RuntimeError):
    pass


def images_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "keepbook" / "image"


def default_dir() -> Path:
    """Where this installation's image is built: one folder per version of the Keep's code
    (its measurement), so checkouts of other versions on one machine never overwrite each
    other's image."""
    given = os.environ.get(ENV_DIR)
    if given:
        return Path(given).expanduser()
    from keepbook.keep.shared import measurement

    return images_dir() / measurement.measurement().hex()[:16]


def image_digest(kernel_sha256: str, initrd_sha256: str, cmdline: str) -> str:
    text = f"{FORMAT}\nkernel {kernel_sha256}\ninitrd {initrd_sha256}\ncmdline {cmdline}\n"
    return hashlib.sha256(text.encode()).hexdigest()


def launch_cmdline(image_cmdline: str, digest: str, backend: str) -> str:
    """The kernel command line a ``backend`` Keep boots with: the image's own, then which
    image and which backend (an SNP launch measures it, so these are then proven too)."""
    if backend not in VM_BACKENDS:
        raise ImageError(f"backend {backend!r} does not boot the Keep image")
    return f"{image_cmdline} {IMAGE_ARG}={digest} {BACKEND_ARG}={backend}"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class KeepImage:
    """A built image, its files checked against its manifest."""

    dir: Path
    digest: str
    cmdline: str
    manifest: dict[str, Any]

    def stale(self) -> str | None:
        """Why this is not the image this installation's Keep code builds (None: it is).  A
        client compares Keeps with its own build; a stale build would vouch for old code."""
        from keepbook.keep.shared import measurement

        if self.manifest.get("keepbook", {}).get("code_measurement") != measurement.measurement().hex():
            return (f"the Keep image in {self.dir} ({self.digest[:16]}…) was built from other "
                    "Keep code than this installation's: rebuild it (`keepbook image build`)")
        return None

    def launch_cmdline(self, backend: str) -> str:
        return launch_cmdline(self.cmdline, self.digest, backend)

    @property
    def kernel(self) -> Path:
        return self.dir / KERNEL

    @property
    def initrd(self) -> Path:
        return self.dir / INITRD

    @classmethod
    def load(cls, directory: Path | None = None, *, check_files: bool = True) -> "KeepImage":
        d = Path(directory) if directory is not None else default_dir()
        build_hint = "build it with `keepbook image build`" + (f" -o {d}" if directory else "")
        try:
            manifest = json.loads((d / MANIFEST).read_text())
            cmdline = (d / CMDLINE).read_text().strip()
        except FileNotFoundError:
            raise ImageError(f"no Keep image in {d}: {build_hint}") from None
        except (OSError, ValueError) as exc:
            raise ImageError(f"the Keep image in {d} is unreadable ({exc}): {build_hint}") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise ImageError(f"{d / MANIFEST} is not a {FORMAT} manifest: {build_hint}")
        files = manifest.get("files") or {}
        want = {KERNEL: files.get(KERNEL), INITRD: files.get(INITRD)}
        if check_files:
            for name, sha in want.items():
                if not (d / name).is_file():
                    raise ImageError(f"the Keep image in {d} has no {name}: {build_hint}")
                got = file_sha256(d / name)
                if got != sha:
                    raise ImageError(f"{d / name} does not match the image manifest (SHA-256 "
                                     f"{got[:16]}…, manifest {str(sha)[:16]}…): the image was "
                                     f"changed after it was built; {build_hint}")
        digest = image_digest(str(want[KERNEL]), str(want[INITRD]), cmdline)
        if digest != manifest.get("digest"):
            raise ImageError(f"the Keep image in {d}: its files give digest {digest[:16]}…, the "
                             f"manifest says {str(manifest.get('digest'))[:16]}…; {build_hint}")
        return cls(d, digest, cmdline, manifest)
