"""Collateral that travels with the evidence (``attest_response.collateral``) and what a
hardware Keep must prove with it by default.

Collateral is signed by the vendor (Intel's TCB info, QE identity and CRLs; AMD's CRL; the
certificates of the SNP extended report's table come in ``certs``), so the Keep or an untrusted
host may carry it: a forged or stale part fails its claim.  On a hardware Keep the client
requires the TCB to be judged — ``UpToDate`` unless the trust policy's ``accepted_tcb_status``
accepts more — so a Keep that brings no collateral is refused, saying what is missing.
"""

from __future__ import annotations

import datetime as _dt
from typing import Sequence

from . import pcs
from .registry import get_verifier
from .trust import EvidenceError, ReferenceValues, SimulatedRoots, TrustVector, failed

#: claims a hardware Keep's evidence must verify by default, per evidence kind
HARDWARE_REQUIRED: dict[str, tuple[str, ...]] = {
    "tdx": ("tcb_status", "tdx_module", "qe_identity", "crl", "collateral_time"),
    "sgx": ("tcb_status", "qe_identity", "crl", "collateral_time"),
    "sev-snp": ("vcek_tcb", "key_cert"),
    "cca": ("lifecycle", "rak_binding", "realm_signature"),
}


def required_on_hardware(kind: str) -> tuple[str, ...]:
    return HARDWARE_REQUIRED.get(kind, ())


def verify(kind: str, evidence: bytes, *, certs: Sequence[bytes], collateral: Sequence[bytes] | None,
           reference: ReferenceValues, simulated_roots: SimulatedRoots = (),
           at: _dt.datetime | None = None) -> TrustVector:
    """Verify evidence with the collateral carried beside it.  Collateral that does not parse
    fails a ``collateral`` claim instead of the whole verification."""
    col = None
    problem = ""
    if collateral:
        try:
            col = pcs.load_parts(list(collateral))
        except EvidenceError as exc:
            problem = str(exc)
    tv = get_verifier(kind).verify(evidence, certs=list(certs), collateral=col, reference=reference,
                                   simulated_roots=simulated_roots, at=at)
    if problem:
        tv.add(failed("collateral", f"the collateral the Keep/host sent does not parse: {problem}"),
               required=True)
    return tv
