"""Gramine-SGX: write the report data to ``/dev/attestation/user_report_data``, read the DCAP
quote from ``/dev/attestation/quote`` (the PCK chain is inside the quote)."""

from __future__ import annotations

from pathlib import Path

from .common import ProviderError, check_report_data


class GramineProvider:
    BASE = Path("dev/attestation")

    def __init__(self, *, root: Path = Path("/")):
        self.base = Path(root) / self.BASE

    @classmethod
    def available(cls, root: Path) -> bool:
        return (Path(root) / cls.BASE / "quote").exists()

    def get_evidence(self, report_data: bytes) -> tuple[str, bytes, list[bytes]]:
        rd = check_report_data(report_data)
        att = self.base / "attestation_type"
        if att.exists():
            kind = att.read_text().strip()
            if kind != "dcap":
                raise ProviderError(f"Gramine attestation type is {kind!r}, expected 'dcap' "
                                    "(set sgx.remote_attestation = \"dcap\" in the manifest)")
        with open(self.base / "user_report_data", "wb", buffering=0) as f:
            f.write(rd)
        quote = (self.base / "quote").read_bytes()
        if not quote:
            raise ProviderError("Gramine returned an empty quote")
        return "sgx", quote, []
