"""Intel DCAP ECDSA quotes: v3 (SGX), v4 (SGX/TDX 1.0) and v5 (TDX 1.5) — the one parser/builder.

Layouts from Intel's "SGX/TDX DCAP Quoting Library API" (appendix A):

* header (48 bytes): version, attestation key type (2 = ECDSA P-256), TEE type (0 SGX, 0x81
  TDX; reserved in v3), QE SVN / PCE SVN (v3), QE vendor id, user data;
* v5 only: body type (1 SGX, 2 TDX 1.0, 3 TDX 1.5) and body size;
* body: SGX enclave report (384), TD report 1.0 (584) or 1.5 (648 = 1.0 + TEE_TCB_SVN2 + MRSERVICETD);
* signature data (u32 length): quote signature r‖s (big-endian, 64), attestation public key x‖y
  (64), then either (v3) QE report, its signature, QE auth data, certification data, or (v4/v5)
  certification data of type 6 that wraps exactly those.  Certification data type 5 is the PEM
  PCK chain.

The quote signature covers header (+ v5 body descriptor) + body.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from .trust import EvidenceError

HEADER_SIZE = 48
SGX_BODY = 384
TD10_BODY = 584
TD15_BODY = 648
TEE_SGX, TEE_TDX = 0x00000000, 0x00000081
ATT_KEY_ECDSA_P256 = 2
INTEL_QE_VENDOR = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")
CERT_PCK_CHAIN = 5
CERT_QE_REPORT = 6
MAX_QUOTE = 64 * 1024

# TD_ATTRIBUTES (Intel TDX module ABI, "TD_PARAMS"): TUD bits 7:0, SEC bits 31:8, OTHER bits 63:32
TD_DEBUG = 1 << 0
TD_SEPT_VE_DISABLE = 1 << 28
TD_PKS = 1 << 30
TD_KL = 1 << 31
TD_PERFMON = 1 << 63
#: TUD 7:1, SEC 27:8 and 29, OTHER 62:32 — reserved, must be zero
TD_RESERVED = 0xFE | 0x0FFFFF00 | (1 << 29) | 0x7FFFFFFF_00000000
TD_FLAG_NAMES = ((TD_DEBUG, "DEBUG"), (TD_SEPT_VE_DISABLE, "SEPT_VE_DISABLE"), (TD_PKS, "PKS"),
                 (TD_KL, "KL"), (TD_PERFMON, "PERFMON"))


@dataclass(frozen=True)
class QuoteHeader:
    version: int
    att_key_type: int
    tee_type: int
    qe_svn: int            # v3 only (reserved in v4/v5)
    pce_svn: int           # v3 only
    qe_vendor_id: bytes
    user_data: bytes

    def to_bytes(self) -> bytes:
        return (struct.pack("<HHIHH", self.version, self.att_key_type, self.tee_type,
                            self.qe_svn, self.pce_svn) + _n(self.qe_vendor_id, 16) + _n(self.user_data, 20))


@dataclass(frozen=True)
class EnclaveReport:
    """SGX REPORT body (an enclave's report; also the QE's report)."""

    cpusvn: bytes = bytes(16)
    miscselect: int = 0
    isvextprodid: bytes = bytes(16)
    attributes: bytes = bytes(16)     # flags u64 (bit1 DEBUG) ‖ xfrm u64
    mrenclave: bytes = bytes(32)
    mrsigner: bytes = bytes(32)
    configid: bytes = bytes(64)
    isvprodid: int = 0
    isvsvn: int = 0
    configsvn: int = 0
    isvfamilyid: bytes = bytes(16)
    report_data: bytes = bytes(64)

    @property
    def debug(self) -> bool:
        return bool(self.attributes[0] & 0x02)

    @classmethod
    def parse(cls, b: bytes) -> "EnclaveReport":
        if len(b) != SGX_BODY:
            raise EvidenceError(f"SGX report body must be {SGX_BODY} bytes, got {len(b)}")
        miscselect, = struct.unpack_from("<I", b, 16)
        isvprodid, isvsvn, configsvn = struct.unpack_from("<HHH", b, 256)
        return cls(cpusvn=b[0:16], miscselect=miscselect, isvextprodid=b[32:48],
                   attributes=b[48:64], mrenclave=b[64:96], mrsigner=b[128:160],
                   configid=b[192:256], isvprodid=isvprodid, isvsvn=isvsvn, configsvn=configsvn,
                   isvfamilyid=b[304:320], report_data=b[320:384])

    def to_bytes(self) -> bytes:
        b = bytearray(SGX_BODY)
        b[0:16] = _n(self.cpusvn, 16)
        struct.pack_into("<I", b, 16, self.miscselect)
        b[32:48] = _n(self.isvextprodid, 16)
        b[48:64] = _n(self.attributes, 16)
        b[64:96] = _n(self.mrenclave, 32)
        b[128:160] = _n(self.mrsigner, 32)
        b[192:256] = _n(self.configid, 64)
        struct.pack_into("<HHH", b, 256, self.isvprodid, self.isvsvn, self.configsvn)
        b[304:320] = _n(self.isvfamilyid, 16)
        b[320:384] = _n(self.report_data, 64)
        return bytes(b)


@dataclass(frozen=True)
class TdReport:
    """TD quote body (TDX 1.0; 1.5 adds tee_tcb_svn2 and mrservicetd)."""

    tee_tcb_svn: bytes = bytes(16)
    mrseam: bytes = bytes(48)
    mrsignerseam: bytes = bytes(48)
    seam_attributes: bytes = bytes(8)
    td_attributes: bytes = bytes(8)   # byte0 bit0 DEBUG (TUD)
    xfam: bytes = bytes(8)
    mrtd: bytes = bytes(48)
    mrconfigid: bytes = bytes(48)
    mrowner: bytes = bytes(48)
    mrownerconfig: bytes = bytes(48)
    rtmrs: tuple[bytes, bytes, bytes, bytes] = (bytes(48),) * 4
    report_data: bytes = bytes(64)
    tee_tcb_svn2: bytes | None = None
    mrservicetd: bytes | None = None

    @property
    def debug(self) -> bool:
        return bool(self.td_attributes[0] & 0x01)

    @property
    def attributes(self) -> int:
        """TD_ATTRIBUTES as the little-endian 64-bit value the TDX module defines."""
        return int.from_bytes(self.td_attributes, "little")

    def attribute_names(self) -> list[str]:
        return [name for bit, name in TD_FLAG_NAMES if self.attributes & bit]

    @classmethod
    def parse(cls, b: bytes) -> "TdReport":
        if len(b) not in (TD10_BODY, TD15_BODY):
            raise EvidenceError(f"TD report body must be {TD10_BODY} or {TD15_BODY} bytes, got {len(b)}")
        o = [0]

        def take(n: int) -> bytes:
            v = b[o[0]:o[0] + n]
            o[0] += n
            return v
        v = dict(tee_tcb_svn=take(16), mrseam=take(48), mrsignerseam=take(48),
                 seam_attributes=take(8), td_attributes=take(8), xfam=take(8), mrtd=take(48),
                 mrconfigid=take(48), mrowner=take(48), mrownerconfig=take(48),
                 rtmrs=(take(48), take(48), take(48), take(48)), report_data=take(64))
        if len(b) == TD15_BODY:
            v.update(tee_tcb_svn2=take(16), mrservicetd=take(48))
        return cls(**v)

    def to_bytes(self) -> bytes:
        out = (_n(self.tee_tcb_svn, 16) + _n(self.mrseam, 48) + _n(self.mrsignerseam, 48)
               + _n(self.seam_attributes, 8) + _n(self.td_attributes, 8) + _n(self.xfam, 8)
               + _n(self.mrtd, 48) + _n(self.mrconfigid, 48) + _n(self.mrowner, 48)
               + _n(self.mrownerconfig, 48) + b"".join(_n(r, 48) for r in self.rtmrs)
               + _n(self.report_data, 64))
        if self.tee_tcb_svn2 is not None or self.mrservicetd is not None:
            out += _n(self.tee_tcb_svn2 or bytes(16), 16) + _n(self.mrservicetd or bytes(48), 48)
        return out


@dataclass(frozen=True)
class QeCertData:
    """What proves the attestation key: the QE's report signed by the PCK, and the PCK chain."""

    qe_report_raw: bytes
    qe_report_sig: bytes          # r‖s big-endian, 64
    qe_auth_data: bytes
    cert_type: int
    cert_data: bytes              # type 5: PEM chain (PCK leaf first)
    wrapped: bool                 # inside a type-6 certification data (v4/v5)

    @property
    def qe_report(self) -> EnclaveReport:
        return EnclaveReport.parse(self.qe_report_raw)

    def to_bytes(self) -> bytes:
        inner = (self.qe_report_raw + _n(self.qe_report_sig, 64)
                 + struct.pack("<H", len(self.qe_auth_data)) + self.qe_auth_data
                 + struct.pack("<HI", self.cert_type, len(self.cert_data)) + self.cert_data)
        if self.wrapped:
            return struct.pack("<HI", CERT_QE_REPORT, len(inner)) + inner
        return inner


@dataclass(frozen=True)
class Quote:
    header: QuoteHeader
    body_type: int                 # 1 SGX, 2 TDX 1.0, 3 TDX 1.5
    body: EnclaveReport | TdReport
    signature: bytes               # r‖s over signed_bytes with the attestation key
    attestation_key: bytes         # x‖y, P-256
    qe: QeCertData
    raw: bytes = field(default=b"", repr=False, compare=False)
    trailing: bytes = b""          # bytes after the quote: provider padding, covered by nothing

    @property
    def kind(self) -> str:
        return "sgx" if self.body_type == 1 else "tdx"

    @property
    def signed_bytes(self) -> bytes:
        return self.raw[:self._signed_len()] if self.raw else self._signed_part()

    def _signed_len(self) -> int:
        return HEADER_SIZE + (6 if self.header.version >= 5 else 0) + len(self.body.to_bytes())

    def _signed_part(self) -> bytes:
        body = self.body.to_bytes()
        desc = struct.pack("<HI", self.body_type, len(body)) if self.header.version >= 5 else b""
        return self.header.to_bytes() + desc + body

    def to_bytes(self) -> bytes:
        sig_data = _n(self.signature, 64) + _n(self.attestation_key, 64) + self.qe.to_bytes()
        return self._signed_part() + struct.pack("<I", len(sig_data)) + sig_data + self.trailing


def _n(v: bytes, n: int) -> bytes:
    v = bytes(v)
    if len(v) != n:
        raise ValueError(f"field must be {n} bytes, got {len(v)}")
    return v


class _Reader:
    def __init__(self, data: bytes, what: str):
        self.d, self.o, self.what = data, 0, what

    def take(self, n: int, name: str) -> bytes:
        if n < 0 or self.o + n > len(self.d):
            raise EvidenceError(f"{self.what} is truncated: {name} needs {n} bytes at offset "
                                f"{self.o}, only {len(self.d) - self.o} left")
        v = self.d[self.o:self.o + n]
        self.o += n
        return v

    def u16(self, name: str) -> int:
        return struct.unpack("<H", self.take(2, name))[0]

    def u32(self, name: str) -> int:
        return struct.unpack("<I", self.take(4, name))[0]


def looks_like_quote(data: bytes) -> bool:
    if len(data) < HEADER_SIZE:
        return False
    version, akt, tee = struct.unpack_from("<HHI", data, 0)
    return version in (3, 4, 5) and akt in (2, 3) and tee in (TEE_SGX, TEE_TDX) \
        and data[12:28] == INTEL_QE_VENDOR


def parse(data: bytes) -> Quote:
    """Parse an ECDSA quote; :class:`EvidenceError` names what is wrong."""
    data = bytes(data)
    if len(data) > MAX_QUOTE:
        raise EvidenceError(f"quote is oversized: {len(data)} bytes (limit {MAX_QUOTE})")
    r = _Reader(data, "quote")
    hdr = r.take(HEADER_SIZE, "header")
    version, akt, tee, qe_svn, pce_svn = struct.unpack_from("<HHIHH", hdr, 0)
    if version not in (3, 4, 5):
        raise EvidenceError(f"DCAP quote version {version} is not supported (supported: 3, 4, 5)")
    if akt != ATT_KEY_ECDSA_P256:
        raise EvidenceError(f"unknown attestation key type {akt} (only 2 = ECDSA P-256 is used by "
                            "Intel's quoting enclaves)")
    if version == 3:
        tee = TEE_SGX  # reserved in v3
    elif tee not in (TEE_SGX, TEE_TDX):
        raise EvidenceError(f"unknown TEE type {tee:#x}")
    header = QuoteHeader(version, akt, tee, qe_svn, pce_svn, hdr[12:28], hdr[28:48])
    if version >= 5:
        body_type, body_size = r.u16("body type"), r.u32("body size")
        expected = {1: SGX_BODY, 2: TD10_BODY, 3: TD15_BODY}.get(body_type)
        if expected is None or body_size != expected:
            raise EvidenceError(f"quote v5 body type {body_type} with size {body_size} is not known")
    else:
        body_type = 1 if tee == TEE_SGX else 2
        body_size = SGX_BODY if tee == TEE_SGX else TD10_BODY
    raw_body = r.take(body_size, "report body")
    body = EnclaveReport.parse(raw_body) if body_type == 1 else TdReport.parse(raw_body)
    sig_len = r.u32("signature data length")
    sig = _Reader(r.take(sig_len, "signature data"), "signature data")
    rest = data[r.o:]
    signature = sig.take(64, "quote signature")
    att_key = sig.take(64, "attestation key")
    if version == 3:
        qe = _parse_qe(sig, wrapped=False)
    else:
        ctype, csize = sig.u16("certification data type"), sig.u32("certification data size")
        if ctype != CERT_QE_REPORT:
            raise EvidenceError(f"certification data type {ctype} is not supported in a v{version} "
                                "quote (expected 6: QE report certification data)")
        qe = _parse_qe(_Reader(sig.take(csize, "QE report certification data"),
                               "QE report certification data"), wrapped=True)
    if sig.o != len(sig.d):
        raise EvidenceError(f"{len(sig.d) - sig.o} unexpected bytes at the end of the signature data")
    return Quote(header, body_type, body, signature, att_key, qe, raw=data, trailing=rest)


def _parse_qe(r: _Reader, *, wrapped: bool) -> QeCertData:
    qe_report = r.take(SGX_BODY, "QE report")
    qe_sig = r.take(64, "QE report signature")
    auth = r.take(r.u16("QE auth data size"), "QE auth data")
    ctype, csize = r.u16("certification data type"), r.u32("certification data size")
    cdata = r.take(csize, "certification data")
    return QeCertData(qe_report, qe_sig, auth, ctype, cdata, wrapped)


# -- explanations ---------------------------------------------------------------------------------

def explain(q: Quote) -> list[tuple[str, str, str]]:
    h = q.header
    rows = [("version", str(h.version), "quote format version (3 SGX, 4 SGX/TDX 1.0, 5 adds a body descriptor)"),
            ("tee_type", "TDX" if h.tee_type == TEE_TDX else "SGX", "which TEE produced the report body"),
            ("att_key_type", str(h.att_key_type), "2 = ECDSA P-256 attestation key held by the quoting enclave"),
            ("qe_vendor_id", h.qe_vendor_id.hex(), "quoting enclave vendor (939a7233… = Intel)"),
            ("user_data", h.user_data.hex(), "QE-defined data (first 16 bytes: platform QE id)")]
    b = q.body
    if isinstance(b, TdReport):
        rows += [("tee_tcb_svn", b.tee_tcb_svn.hex(), "security versions of the TDX module and its loader"),
                 ("mrseam", b.mrseam.hex(), "measurement of the TDX module"),
                 ("mrsignerseam", b.mrsignerseam.hex(), "signer of the TDX module (zero: Intel)"),
                 ("seam_attributes", b.seam_attributes.hex(), "TDX module attributes"),
                 ("td_attributes", b.td_attributes.hex(), "TD attributes: "
                  f"{', '.join(b.attribute_names()) or 'none set'} (SEPT_VE_DISABLE should be set: "
                  "without it the host can inject #VE exceptions on pending pages)"),
                 ("xfam", b.xfam.hex(), "extended CPU features the TD may use"),
                 ("mrtd", b.mrtd.hex(), "measurement of the TD's initial memory (firmware, TDVF)"),
                 ("mrconfigid", b.mrconfigid.hex(), "host-supplied configuration id"),
                 ("mrowner", b.mrowner.hex(), "host-supplied owner id"),
                 ("mrownerconfig", b.mrownerconfig.hex(), "host-supplied owner configuration")]
        rows += [(f"rtmr{i}", r.hex(), "runtime-extended measurement register "
                  + ["(firmware config)", "(kernel, boot loader)", "(kernel command line, initrd)", "(application)"][i])
                 for i, r in enumerate(b.rtmrs)]
        rows.append(("report_data", b.report_data.hex(), "64 bytes the TD asked to include: binds nonce and key"))
        if b.mrservicetd is not None:
            rows += [("tee_tcb_svn2", (b.tee_tcb_svn2 or b"").hex(), "TDX 1.5: TCB SVN of the running module"),
                     ("mrservicetd", b.mrservicetd.hex(), "TDX 1.5: measurement of bound service TDs")]
    else:
        rows += [("cpusvn", b.cpusvn.hex(), "CPU security version"),
                 ("miscselect", f"{b.miscselect:#x}", "extended enclave features"),
                 ("attributes", b.attributes.hex(), f"enclave attributes (DEBUG = {b.debug})"),
                 ("mrenclave", b.mrenclave.hex(), "measurement of the enclave's code and data"),
                 ("mrsigner", b.mrsigner.hex(), "hash of the key that signed the enclave"),
                 ("isvprodid", str(b.isvprodid), "product id chosen by the enclave signer"),
                 ("isvsvn", str(b.isvsvn), "security version chosen by the enclave signer"),
                 ("report_data", b.report_data.hex(), "64 bytes the enclave asked to include")]
    qe = q.qe.qe_report
    rows += [("signature", q.signature.hex()[:32] + "…", "ECDSA P-256 signature by the attestation key over header and body"),
             ("attestation_key", q.attestation_key.hex()[:32] + "…", "the quoting enclave's attestation public key"),
             ("qe_report.mrenclave", qe.mrenclave.hex(), "measurement of the quoting enclave"),
             ("qe_report.mrsigner", qe.mrsigner.hex(), "signer of the quoting enclave (Intel)"),
             ("qe_report.isvsvn", str(qe.isvsvn), "quoting enclave security version"),
             ("qe_report.report_data", qe.report_data.hex(), "SHA-256(attestation key ‖ QE auth data) ‖ zeros: binds the key"),
             ("certification_data", f"type {q.qe.cert_type}, {len(q.qe.cert_data)} bytes", "5 = PCK certificate chain (PEM)")]
    if q.trailing:
        what = "zero bytes" if not any(q.trailing) else "bytes (not zero)"
        rows.append(("trailing", f"{len(q.trailing)} {what}", "after the quote: a provider's fixed-size buffer; no signature covers them, they are ignored"))
    return rows
