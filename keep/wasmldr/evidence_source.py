"""Where the Keep gets its evidence: the TEE for hardware backends, a simulated vendor for
``sim-*``, nothing for ``nil``.  Inside the Keep."""

from __future__ import annotations

from keepbook.keep import measurement
from keepbook.keep.evidence import nil

SIM_KINDS = {"sim-snp": "sev-snp", "sim-tdx": "tdx", "sim-sgx": "sgx"}
HW_KINDS = {"snp": "sev-snp", "tdx": "tdx", "sgx": "sgx"}


def evidence_kind(backend: str) -> str:
    if backend == "nil":
        return nil.KIND
    if backend in SIM_KINDS:
        return SIM_KINDS[backend]
    if backend in HW_KINDS:
        return HW_KINDS[backend]
    raise ValueError(f"unknown backend {backend!r}")


def get_evidence(backend: str, report_data: bytes) -> tuple[str, bytes, list[bytes]]:
    """(evidence kind, evidence bytes, DER certificates that come with it)."""
    if backend == "nil":
        return nil.KIND, nil.make(report_data), []
    if backend in SIM_KINDS:
        from keepbook.keep.evidence import simulated

        kind = SIM_KINDS[backend]
        length = 32 if kind == "sgx" else 48
        evidence, certs = simulated.make_evidence(kind, report_data, measurement.measurement(length))
        return kind, evidence, list(certs)
    if backend in HW_KINDS:
        from keepbook.keep.wasmldr import providers

        return providers.get_evidence(backend, report_data)
    raise ValueError(f"unknown backend {backend!r}")
