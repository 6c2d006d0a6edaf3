"""Which kind of evidence is this?  Decided from the bytes alone (hex text is accepted)."""

from __future__ import annotations

import re
import struct

from . import azure_hcl, cca, dcap, nil, snp
from .trust import EvidenceError

_HEX = re.compile(rb"\A[0-9a-fA-F\s]+\Z")


def decode(data: bytes) -> bytes:
    """Evidence bytes; hex text (with any whitespace) is decoded first."""
    data = bytes(data)
    if data and _HEX.match(data):
        compact = re.sub(rb"\s+", b"", data)
        if len(compact) % 2 == 0 and len(compact) >= 2 * 64:
            return bytes.fromhex(compact.decode())
    return data


def detect_kind(data: bytes) -> str:
    """``sev-snp`` (also inside an Azure HCL report), ``tdx``, ``sgx``, ``cca`` or ``nil``;
    :class:`EvidenceError` when unrecognised."""
    return detect(data)[0]


def detect(data: bytes) -> tuple[str, bytes]:
    """(kind, evidence bytes) — hex text decoded."""
    raw = decode(data)
    if raw.startswith(nil.MAGIC):
        return "nil", raw
    if cca.looks_like(raw):
        return "cca", raw       # CBOR tag 907: an Arm CCA token collection
    if azure_hcl.looks_like(raw):
        return "sev-snp", raw   # an Azure HCL report wraps an SEV-SNP report
    if dcap.looks_like_quote(raw):
        version, _, tee = struct.unpack_from("<HHI", raw, 0)
        if version == 3:
            return "sgx", raw
        if version >= 5 and len(raw) >= 50:
            return ("sgx" if struct.unpack_from("<H", raw, 48)[0] == 1 else "tdx"), raw
        return ("tdx" if tee == dcap.TEE_TDX else "sgx"), raw
    if len(raw) >= 4:
        version = struct.unpack_from("<I", raw, 0)[0]
        if 2 <= version <= 5 and len(raw) == snp.REPORT_SIZE:
            return "sev-snp", raw
        if 2 <= version <= 5 and 0x2A0 < len(raw) <= 4 * snp.REPORT_SIZE:
            return "sev-snp", raw  # let the SNP parser say "truncated"/"oversized"
    if len(raw) >= 2 and struct.unpack_from("<H", raw, 0)[0] in (3, 4, 5) and len(raw) < dcap.HEADER_SIZE:
        raise EvidenceError(f"evidence is truncated: {len(raw)} bytes is shorter than a quote header")
    raise EvidenceError(f"unrecognised evidence ({len(raw)} bytes): not an SEV-SNP report "
                        f"({snp.REPORT_SIZE} bytes, version 2–5), nor an Intel DCAP quote "
                        "(version 3–5 with Intel's QE vendor id), nor an Arm CCA token (CBOR tag 907), "
                        "nor nil evidence")
