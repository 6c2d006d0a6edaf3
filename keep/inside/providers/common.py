"""Shared pieces of the evidence providers: the error type and the SNP certificate table."""

from __future__ import annotations

import struct
import uuid


class ProviderError(RuntimeError):
    """The TEE would not give evidence; the message says why and what to check."""


def check_report_data(report_data: bytes) -> bytes:
    if len(report_data) != 64:
        raise ProviderError(f"report data must be 64 bytes, got {len(report_data)}")
    return bytes(report_data)


#: GUIDs of the SEV-SNP extended-report certificate table (GHCB spec, "SNP Extended Guest Request")
SNP_CERT_GUIDS = {
    uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd"): "vcek",
    uuid.UUID("a8074bc2-a25a-483e-aae6-39c045a0b8a1"): "vlek",
    uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782"): "ask",
    uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae"): "ark",
}


def parse_cert_table(blob: bytes) -> list[bytes]:
    """SNP certificate table (GUID ‖ offset u32 ‖ length u32 …, zero entry ends it) → DER list."""
    out: list[bytes] = []
    o = 0
    while o + 24 <= len(blob):
        guid, off, ln = blob[o:o + 16], *struct.unpack_from("<II", blob, o + 16)
        if not any(guid) and off == 0 and ln == 0:
            return out
        if off + ln > len(blob):
            raise ProviderError("SNP certificate table entry points outside the buffer")
        if uuid.UUID(bytes_le=guid) in SNP_CERT_GUIDS:
            out.append(blob[off:off + ln])
        o += 24
    if blob and not out and any(blob):
        raise ProviderError("SNP certificate table has no terminating entry")
    return out


def build_cert_table(certs: dict[str, bytes]) -> bytes:
    """The inverse of :func:`parse_cert_table` (for tests and the simulator)."""
    names = {v: k for k, v in SNP_CERT_GUIDS.items()}
    n = len(certs)
    off = 24 * (n + 1)
    head, body = b"", b""
    for name, der in certs.items():
        head += names[name].bytes_le + struct.pack("<II", off + len(body), len(der))
        body += der
    return head + bytes(24) + body
