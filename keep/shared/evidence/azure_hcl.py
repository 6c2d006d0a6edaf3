"""Azure confidential VM HCL report (SEV-SNP): the one parser.

Azure's paravisor (HCL) answers a guest's attestation request with an "HCL report" (layout from
Microsoft's IGVM attestation request; confidential-containers/trustee ``az-snp-vtpm``):

* header, 32 bytes: ``HCLA`` signature, u32 version, u32 report size, u32 request type, u32
  status, 12 reserved bytes;
* the hardware report: a 1184-byte SEV-SNP ATTESTATION_REPORT (bytes 32–1215);
* IGVM request data: u32 data size (= 20 + variable size), u32 version, u32 report type (2 =
  SNP), u32 hash type (1 SHA-256, 2 SHA-384, 3 SHA-512), u32 variable data size, then the
  *runtime claims* JSON — the vTPM's attestation key ``HCLAkPub``, the VM configuration, and
  ``user-data`` (what the guest asked to include);
* zero padding to Azure's fixed buffer size.

The SNP report's REPORT_DATA is HASH(runtime claims) padded with zeros: that is what binds the
vTPM key and the user data to the hardware-signed report.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field
from typing import Any

from . import snp
from .trust import Claim, EvidenceError, failed, unverified, verified

MAGIC = b"HCLA"
HEADER_SIZE = 32
REPORT_TYPE_SNP = 2
HASHES = {1: ("SHA-256", hashlib.sha256), 2: ("SHA-384", hashlib.sha384), 3: ("SHA-512", hashlib.sha512)}
MAX_SIZE = 64 * 1024


@dataclass(frozen=True)
class HclReport:
    version: int
    request_type: int
    status: int
    report: snp.SnpReport
    data_version: int
    report_type: int
    hash_type: int
    runtime_claims: bytes                   # the exact JSON bytes that REPORT_DATA hashes
    claims: dict[str, Any] = field(default_factory=dict, compare=False)
    padding_ok: bool = True                 # everything after the declared size is zero

    @property
    def hash_name(self) -> str:
        return HASHES[self.hash_type][0]

    def expected_report_data(self) -> bytes:
        return HASHES[self.hash_type][1](self.runtime_claims).digest().ljust(64, b"\0")

    def key(self, kid: str) -> dict[str, Any] | None:
        keys = self.claims.get("keys")
        if not isinstance(keys, list):
            return None
        return next((k for k in keys if isinstance(k, dict) and k.get("kid") == kid), None)

    @property
    def user_data(self) -> bytes | None:
        v = self.claims.get("user-data")
        try:
            return bytes.fromhex(v) if isinstance(v, str) else None
        except ValueError:
            return None


def looks_like(data: bytes) -> bool:
    return data[:4] == MAGIC


def parse(data: bytes) -> HclReport:
    """Parse an HCL report; :class:`EvidenceError` names what is wrong."""
    data = bytes(data)
    if len(data) > MAX_SIZE:
        raise EvidenceError(f"HCL report is oversized: {len(data)} bytes (limit {MAX_SIZE})")
    end_snp = HEADER_SIZE + snp.REPORT_SIZE
    if len(data) < end_snp + 20 or not looks_like(data):
        raise EvidenceError(f"not an Azure HCL report: expected 'HCLA' and at least {end_snp + 20} "
                            f"bytes, got {len(data)}")
    _, version, size, request_type, status = struct.unpack_from("<4sIIII", data, 0)
    if status != 0:
        raise EvidenceError(f"the HCL report says its request failed (status {status:#x})")
    if not end_snp + 20 <= size <= len(data):
        raise EvidenceError(f"HCL report size field {size} does not fit the {len(data)} bytes given")
    report = snp.parse(data[HEADER_SIZE:end_snp])
    data_size, data_version, report_type, hash_type, var_size = struct.unpack_from("<IIIII", data, end_snp)
    if report_type != REPORT_TYPE_SNP:
        raise EvidenceError(f"HCL report type {report_type} is not SEV-SNP (2)")
    if hash_type not in HASHES:
        raise EvidenceError(f"HCL report hash type {hash_type} is unknown (1 SHA-256, 2 SHA-384, 3 SHA-512)")
    if data_size != 20 + var_size or end_snp + data_size != size:
        raise EvidenceError(f"HCL report runtime data sizes disagree (data {data_size}, claims "
                            f"{var_size}, report {size}): truncated or altered")
    claims_raw = data[end_snp + 20:size]
    try:
        claims = json.loads(claims_raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise EvidenceError(f"HCL runtime claims are not JSON: {exc}") from None
    if not isinstance(claims, dict):
        raise EvidenceError("HCL runtime claims must be a JSON object")
    return HclReport(version, request_type, status, report, data_version, report_type, hash_type,
                     claims_raw, claims, not any(data[size:]))


def binding_claim(hcl: HclReport) -> Claim:
    """``runtime_claims``: REPORT_DATA = HASH(runtime claims JSON) ‖ zeros."""
    want = hcl.expected_report_data()
    if hcl.report.report_data != want:
        return failed("runtime_claims", f"REPORT_DATA is not the {hcl.hash_name} of the runtime claims: "
                      "the vTPM key or the user data were replaced after the report was signed")
    if not hcl.padding_ok:
        return failed("runtime_claims", "non-zero bytes after the HCL report: covered by nothing — "
                      "the report was altered")
    ak = hcl.key("HCLAkPub")
    tail = "; the vTPM attestation key HCLAkPub is bound" if ak else "; no HCLAkPub key in them"
    return verified("runtime_claims", f"REPORT_DATA = {hcl.hash_name}(runtime claims JSON){tail}")


def user_data_claim(hcl: HclReport, expected: bytes | None) -> Claim:
    """``report_data`` for an HCL report: the guest's request lands in the claims' ``user-data``."""
    got = hcl.user_data
    if expected is None:
        shown = got.hex()[:32] + "…" if got else "absent"
        return unverified("report_data", f"user data in the runtime claims {shown}; no expected value given")
    if got is None:
        return failed("report_data", "the runtime claims carry no user-data to compare your "
                      "expected report data with")
    if got.ljust(64, b"\0")[:64] == bytes(expected):
        return verified("report_data", "the runtime claims' user-data matches the expected value")
    return failed("report_data", "the runtime claims' user-data does not match the expected value: "
                  "the report answers a different request (replayed, or for another key)")


def explain(hcl: HclReport) -> list[tuple[str, str, str]]:
    ak = hcl.key("HCLAkPub")
    vm = hcl.claims.get("vm-configuration")
    rows = [("hcl_version", str(hcl.version), "Azure HCL report format version"),
            ("hcl_hash_type", hcl.hash_name, "hash of the runtime claims that REPORT_DATA carries"),
            ("vtpm_key", json.dumps(ak, sort_keys=True)[:120] + "…" if ak else "absent",
             "HCLAkPub: the vTPM attestation key — TPM quotes signed by it inherit this report's trust")]
    if isinstance(vm, dict):
        rows.append(("vm_configuration", json.dumps(vm, sort_keys=True)[:160],
                     "Azure's VM settings (secure boot, TPM, console) as the paravisor reports them"))
    if hcl.user_data is not None:
        rows.append(("user_data", hcl.user_data.hex(), "64 bytes the guest asked to include"))
    return rows
