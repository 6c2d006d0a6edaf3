"""Evidence kinds → verifiers, loaded lazily so that importing one never costs all of them."""

from __future__ import annotations

import importlib

from .trust import EvidenceError, Verifier

#: evidence kind → "module:Class" (modules relative to this package)
_VERIFIERS = {
    "nil": "nil:NilVerifier",
    "sev-snp": "snp_verify:SnpVerifier",
    "tdx": "dcap_verify:TdxVerifier",
    "sgx": "dcap_verify:SgxVerifier",
    "cca": "cca_verify:CcaVerifier",
}


def kinds() -> list[str]:
    return sorted(_VERIFIERS)


def get_verifier(kind: str) -> Verifier:
    target = _VERIFIERS.get(kind)
    if target is None:
        raise EvidenceError(f"unknown evidence kind {kind!r}; known kinds: {', '.join(kinds())}")
    module_name, cls_name = target.split(":")
    module = importlib.import_module(f"{__package__}.{module_name}")
    return getattr(module, cls_name)()
