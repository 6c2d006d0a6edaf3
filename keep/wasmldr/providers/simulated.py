"""The ``sim-*`` backends: byte-exact evidence signed by this installation's simulated roots."""

from __future__ import annotations

import hashlib

from .common import check_report_data

KINDS = {"sim-snp": "sev-snp", "sim-tdx": "tdx", "sim-sgx": "sgx"}


class SimulatedProvider:
    def __init__(self, backend: str, measurement: bytes | None = None, **overrides):
        self.kind = KINDS[backend]
        size = 32 if self.kind == "sgx" else 48
        self.measurement = measurement or hashlib.sha384(b"keepbook simulated keep").digest()[:size]
        self.overrides = overrides

    def get_evidence(self, report_data: bytes) -> tuple[str, bytes, list[bytes]]:
        from keepbook.keep.evidence import simulated
        ev, certs = simulated.make_evidence(self.kind, check_report_data(report_data),
                                            self.measurement, **self.overrides)
        return self.kind, ev, list(certs)
