"""Where the Keep gets its evidence: the TEE for hardware backends, the simulated vendor for
``sim-*``, nothing for ``nil``.  Inside the Keep.  Which evidence kind a backend returns is a
fact of the shared registry (:mod:`keepbook.keep.shared.facts`); the providers fetch it."""

from __future__ import annotations

from keepbook.keep.shared import facts, measurement
from keepbook.keep.shared.evidence import nil


def get_evidence(backend: str, report_data: bytes) -> tuple[str, bytes, list[bytes]]:
    """(evidence kind, evidence bytes, DER certificates that come with it)."""
    spec = facts.backend(backend)
    if spec.evidence == nil.KIND:
        return nil.KIND, nil.make(report_data), []
    from keepbook.keep.inside import providers

    if spec.simulated:
        # a simulated Keep's measurement is the digest of the code it runs (measurement.py)
        provider = providers.SimulatedProvider(
            backend, measurement.measurement(facts.measurement_length(spec.evidence)))
        return provider.get_evidence(report_data)
    return providers.get_evidence(backend, report_data)
