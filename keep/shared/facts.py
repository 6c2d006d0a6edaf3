"""The facts every domain needs, stated once: backends, profiles, protection levels, limits.

Shared core: no secrets, no I/O.  The keep manager offers backends from this table (and adds
whether *this* host can run them), the Keep picks its evidence source from it, and the client
knows from it which evidence kind and protection a Keep of a backend must show.  Adding a
backend starts here (docs/CONTRIBUTING.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

PROFILES: tuple[str, ...] = ("debug", "staging", "production")
DEFAULT_PROFILE = "staging"
PROTECTION_LEVELS: tuple[str, ...] = ("none", "simulated", "hardware")

MiB = 1024 * 1024
#: Limits a Keep gets when the user names none (per cell: memory, deadline, output bytes).
DEFAULT_MEMORY_BYTES = 1024 * MiB
DEFAULT_TIMEOUT_S = 600
#: The per-cell output budget: past it a cell's output is cut, with a notice saying so.
DEFAULT_OUTPUT_BYTES = 8 * MiB
DEFAULT_LIMITS: Mapping[str, int] = MappingProxyType({
    "memory_bytes": DEFAULT_MEMORY_BYTES, "timeout_s": DEFAULT_TIMEOUT_S,
    "output_bytes": DEFAULT_OUTPUT_BYTES})


@dataclass(frozen=True)
class Backend:
    """One Keep type.  ``evidence`` is the evidence kind its Keeps return (a verifier kind);
    ``protection`` is the best it can prove: ``none``, ``simulated`` or ``hardware``."""

    name: str
    protection: str
    evidence: str
    note: str
    #: the Keep is its own virtual machine booted from the Keep image (keep/shared/vm_image.py)
    vm: bool = False
    #: the Keep is a Kubernetes pod in its own Kata VM (Confidential Containers), started from
    #: the keepbook Keep container image by ``keepmgr --launcher kubernetes``
    #: (keep/shared/pod_keep.py); its init-data is bound into the evidence
    pod: bool = False

    @property
    def simulated(self) -> bool:
        return self.protection == "simulated"

    @property
    def hardware(self) -> bool:
        return self.protection == "hardware"


BACKENDS: Mapping[str, Backend] = MappingProxyType({b.name: b for b in (
    Backend("nil", "none", "nil",
            "debugging Keep: a plain local process, unsigned evidence — NO PROTECTION"),
    Backend("sim-snp", "simulated", "sev-snp",
            "SEV-SNP report signed by a locally generated SIMULATED AMD root — no hardware protection"),
    Backend("sim-tdx", "simulated", "tdx",
            "TDX quote signed by a locally generated SIMULATED Intel root — no hardware protection"),
    Backend("sim-sgx", "simulated", "sgx",
            "SGX quote signed by a locally generated SIMULATED Intel root — no hardware protection"),
    Backend("sim-cca", "simulated", "cca",
            "Arm CCA token signed by a locally generated SIMULATED platform key — no hardware protection"),
    Backend("kvm", "none", "nil",
            "debugging Keep: the Keep image in its own plain VM (QEMU), unsigned evidence — "
            "NO PROTECTION (VM)", vm=True),
    Backend("snp", "hardware", "sev-snp",
            "the Keep image as its own AMD SEV-SNP confidential VM", vm=True),
    Backend("tdx", "hardware", "tdx", "the Keep image as its own Intel TDX trust domain", vm=True),
    Backend("sgx", "hardware", "sgx", "Intel SGX enclave under Gramine"),
    Backend("cca", "hardware", "cca", "the Keep in an Arm CCA realm (platform key from your trust policy)"),
    Backend("coco-snp", "hardware", "sev-snp",
            "a Kubernetes pod in its own AMD SEV-SNP confidential VM (Confidential Containers, "
            "runtime class kata-qemu-snp); its init-data digest is the report's HOST_DATA",
            pod=True),
    Backend("coco-tdx", "hardware", "tdx",
            "a Kubernetes pod in its own Intel TDX trust domain (Confidential Containers, "
            "runtime class kata-qemu-tdx); its init-data digest is the quote's MRCONFIGID",
            pod=True),
    Backend("coco-dev", "none", "nil",
            "debugging Keep: a Kubernetes pod in a plain Kata VM (runtime class "
            "kata-qemu-coco-dev), unsigned evidence — NO PROTECTION (VM)", pod=True),
)})

#: Backends whose Keeps are Kubernetes pods (offered by ``keepmgr --launcher kubernetes`` only).
POD_BACKENDS: tuple[str, ...] = tuple(n for n, b in BACKENDS.items() if b.pod)
#: What a keep manager offers when not told otherwise (hardware ones only where present).
DEFAULT_BACKENDS: tuple[str, ...] = tuple(n for n in BACKENDS if n not in POD_BACKENDS)
#: Backends whose Keeps are VMs of their own, booted from the Keep image.
VM_BACKENDS: tuple[str, ...] = tuple(n for n, b in BACKENDS.items() if b.vm)
DEFAULT_BACKEND = "sim-snp"


def backend(name: str) -> Backend:
    """The facts of backend ``name``; ValueError naming the known ones otherwise."""
    try:
        return BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown backend {name!r}; known: {', '.join(BACKENDS)}") from None


#: Bytes of the launch measurement field per evidence kind: SGX's MRENCLAVE is 32, SNP's
#: MEASUREMENT and TDX's MRTD 48, a CCA realm's RIM 64 (the RMM measures with SHA-256 or SHA-512;
#: keepbook's realms use SHA-512).
MEASUREMENT_LENGTHS: Mapping[str, int] = MappingProxyType({"sgx": 32, "sev-snp": 48, "tdx": 48,
                                                           "cca": 64})


def measurement_length(evidence_kind: str) -> int:
    """Bytes of the launch measurement field of ``evidence_kind`` (48 when it has none)."""
    return MEASUREMENT_LENGTHS.get(evidence_kind, 48)
