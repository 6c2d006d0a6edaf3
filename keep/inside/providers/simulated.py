"""The ``sim-*`` backends: byte-exact evidence signed by this installation's simulated vendor
(:mod:`keepbook.keep.inside.simulated_tee`)."""

from __future__ import annotations

import hashlib

from keepbook.keep.shared import facts

from .common import check_report_data


class SimulatedProvider:
    def __init__(self, backend: str, measurement: bytes | None = None, **overrides):
        spec = facts.backend(backend)
        if not spec.simulated:
            raise ValueError(f"backend {backend!r} is not a simulated backend")
        self.kind = spec.evidence
        size = facts.measurement_length(self.kind)
        self.measurement = measurement or hashlib.sha512(b"keepbook simulated keep").digest()[:size]
        self.overrides = overrides

    def get_evidence(self, report_data: bytes) -> tuple[str, bytes, list[bytes]]:
        from keepbook.keep.inside.simulated_tee import vendor

        ev, certs = vendor.make_evidence(self.kind, check_report_data(report_data),
                                         self.measurement, **self.overrides)
        return self.kind, ev, list(certs)
