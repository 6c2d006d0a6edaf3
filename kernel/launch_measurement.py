"""The launch measurement a hardware VM Keep must show, computed here, on the user's machine,
from the Keep image this machine builds itself (``keepbook image build`` is reproducible, so
it is the image the host should have booted) — no hand-copied digest.

SEV-SNP: with ``sev-snp-measure`` (PyPI, the VirTEE project) from the guest firmware (OVMF,
AmdSev build), the kernel, the initramfs and the command line the launcher passes (the image's
own plus ``keepbook.image=<digest> keepbook.backend=snp``), the vCPU count and type, and the
guest features — the same launch parameters the host's launcher uses (keep/shared/vm_image.py).

TDX: no maintained library computes MRTD and the RTMRs from TDVF, kernel and command line, so
the user must supply them (``[reference] measurement`` = MRTD, ``rtmrs``) from a launch they
trust; without them a TDX Keep is refused.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from keepbook.keep.shared import vm_image
from keepbook.keep.shared.evidence.trust import Claim, failed, verified


class MeasurementError(RuntimeError):
    """The expected measurement cannot be computed; the message says what is missing."""


@dataclass(frozen=True)
class SnpLaunch:
    ovmf: Path
    kernel: Path
    initrd: Path
    cmdline: str
    vcpus: int = vm_image.SNP_VCPUS
    vcpu_type: str = vm_image.SNP_VCPU_TYPE
    guest_features: int = vm_image.SNP_GUEST_FEATURES


def snp_launch(image: vm_image.KeepImage, ovmf: Path) -> SnpLaunch:
    """The launch the host's ``snp`` launcher makes from ``image`` (keep/host/vm.py)."""
    return SnpLaunch(ovmf=ovmf, kernel=image.kernel, initrd=image.initrd,
                     cmdline=image.launch_cmdline("snp"))


def expected_snp_measurement(launch: SnpLaunch) -> bytes:
    """The 48-byte SEV-SNP launch digest (the report's MEASUREMENT) of ``launch``."""
    try:
        from sevsnpmeasure import guest, vcpu_types
        from sevsnpmeasure.sev_mode import SevMode
        from sevsnpmeasure.vmm_types import VMMType
    except ImportError:
        raise MeasurementError("the sev-snp-measure package is missing (pip install "
                               "sev-snp-measure)") from None
    if not launch.ovmf.is_file():
        raise MeasurementError(f"no SEV-SNP guest firmware at {launch.ovmf}: point the trust "
                               f"policy's snp_ovmf (or ${vm_image.SNP_OVMF_ENV}) at the OVMF the "
                               "host boots (built from edk2's OvmfPkg/AmdSev/AmdSevX64.dsc)")
    sig = vcpu_types.CPU_SIGS.get(launch.vcpu_type)
    if sig is None:
        raise MeasurementError(f"unknown vCPU type {launch.vcpu_type!r}; known: "
                               f"{', '.join(vcpu_types.CPU_SIGS)}")
    try:
        return guest.calc_launch_digest(SevMode.SEV_SNP, launch.vcpus, sig, str(launch.ovmf),
                                        str(launch.kernel), str(launch.initrd), launch.cmdline,
                                        launch.guest_features, vmm_type=VMMType.QEMU)
    except RuntimeError as exc:
        if "SNP_KERNEL_HASHES" in str(exc):
            raise MeasurementError(f"{launch.ovmf} has no SNP kernel-hashes section: it is not the "
                                   "AmdSev build of OVMF, which checks the kernel, initramfs and "
                                   "command line before it runs them") from None
        raise MeasurementError(f"sev-snp-measure failed on {launch.ovmf}: {exc}") from None
    except (ValueError, OSError, IndexError, KeyError) as exc:
        raise MeasurementError(f"{launch.ovmf} is not an OVMF image sev-snp-measure can read "
                               f"({type(exc).__name__}: {exc})") from None


@functools.lru_cache(maxsize=4)
def _cached_snp(image_digest: str, image_dir: str, ovmf: str, ovmf_mtime_ns: int) -> bytes:
    image = vm_image.KeepImage.load(Path(image_dir))
    if image.digest != image_digest:
        raise MeasurementError(f"the Keep image in {image_dir} changed while it was read")
    return expected_snp_measurement(snp_launch(image, Path(ovmf)))


def expected_launch(backend: str, snp_ovmf: str | None = None) -> tuple[bytes | None, Claim]:
    """(the measurement a ``backend`` Keep must show, or None; the claim that says how it was
    obtained — failed when it cannot be, so that the Keep is refused rather than waved
    through)."""
    if backend == "tdx":
        return None, failed("expected_measurement",
                            "keepbook cannot compute a TDX Keep's MRTD and RTMRs (no maintained "
                            "library does it from TDVF, kernel and command line): give "
                            "[reference] measurement (the MRTD) and rtmrs in your trust policy, "
                            "taken from a launch of this Keep image you trust")
    if backend != "snp":
        return None, failed("expected_measurement", f"no launch measurement is known for {backend}")
    ovmf = vm_image.snp_ovmf_path(snp_ovmf)
    try:
        image = vm_image.KeepImage.load(check_files=False)
        if image.stale():
            raise MeasurementError(image.stale())
        value = _cached_snp(image.digest, str(image.dir), str(ovmf),
                            ovmf.stat().st_mtime_ns if ovmf.is_file() else 0)
    except (vm_image.ImageError, MeasurementError) as exc:
        return None, failed("expected_measurement",
                            f"cannot compute the launch measurement an SNP Keep must show: {exc}. "
                            "Build the image (`keepbook image build`), or give [reference] "
                            "measurement in your trust policy")
    return value, verified("expected_measurement",
                           f"computed here from Keep image {image.digest[:16]}… and {ovmf.name}, "
                           f"{vm_image.SNP_VCPUS} vCPU {vm_image.SNP_VCPU_TYPE}, guest features "
                           f"{vm_image.SNP_GUEST_FEATURES:#x}", measurement=value.hex(),
                           image=image.digest, ovmf=str(ovmf))
