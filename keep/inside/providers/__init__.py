"""Evidence providers inside a real Keep: ask the TEE for evidence over ``report_data``.

``get_evidence(backend, report_data, root="/")`` → ``(kind, evidence, DER certificates)``:

* ``snp``: configfs-tsm when the kernel has it (Linux ≥ 6.7), else ``/dev/sev-guest``
  SNP_GET_EXT_REPORT;
* ``tdx``, ``cca``: configfs-tsm (CCA: the ``arm_cca_guest`` provider, Linux ≥ 6.13);
* ``sgx``: Gramine's ``/dev/attestation`` pseudo-files;
* ``coco-snp``/``coco-tdx`` (a Keep pod in a Kata confidential VM): as ``snp``/``tdx``, from the
  guest's report interface where the container sees it (docs/deploy.md says what the pod needs);
* ``sim-snp``/``sim-tdx``/``sim-sgx``/``sim-cca``: :mod:`keepbook.keep.inside.simulated_tee`.

``root`` is prepended to every device path, so tests run against a fake directory tree.
"""

from __future__ import annotations

import os
from pathlib import Path

from keepbook.keep.shared import facts

from .common import ProviderError
from .configfs_tsm import ConfigfsTsmProvider
from .gramine import GramineProvider
from .sev_guest import SevGuestProvider
from .simulated import SimulatedProvider

__all__ = ["get_evidence", "get_provider", "ProviderError", "ConfigfsTsmProvider",
           "SevGuestProvider", "GramineProvider", "SimulatedProvider"]


def get_provider(backend: str, *, root: str | os.PathLike = "/"):
    """The provider for ``backend`` on this machine (or in the tree under ``root``)."""
    r = Path(root)
    if facts.backend(backend).simulated:
        return SimulatedProvider(backend)
    backend = {"coco-snp": "snp", "coco-tdx": "tdx"}.get(backend, backend)  # same TEE interface
    if backend in ("snp", "tdx", "cca"):
        if ConfigfsTsmProvider.available(r):
            return ConfigfsTsmProvider(root=r, expect=facts.backend(backend).evidence)
        if backend == "snp" and SevGuestProvider.available(r):
            return SevGuestProvider(root=r)
        raise ProviderError(f"no {backend.upper()} evidence interface found: neither "
                            f"{r / ConfigfsTsmProvider.BASE} (configfs-tsm)"
                            + (f" nor {r / SevGuestProvider.DEVICE}" if backend == "snp" else "")
                            + " exists — is this really a confidential VM"
                            + (" (an Arm CCA realm)?" if backend == "cca" else "?"))
    if backend == "sgx":
        if GramineProvider.available(r):
            return GramineProvider(root=r)
        raise ProviderError(f"{r / GramineProvider.BASE} not found: not running inside Gramine-SGX")
    raise ProviderError(f"backend {backend!r} has no evidence provider")


def get_evidence(backend: str, report_data: bytes, *, root: str | os.PathLike = "/"
                 ) -> tuple[str, bytes, list[bytes]]:
    return get_provider(backend, root=root).get_evidence(report_data)
