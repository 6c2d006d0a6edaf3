"""AMD VCEK/VLEK certificate extensions (OID arc 1.3.6.1.4.1.3704.1) — parse and build.

AMD KDS puts the TCB the key was derived from into the certificate: each SPL (security patch
level) as a DER INTEGER, the product name as an IA5String, and the chip's hwID as the raw bytes
(64 bytes; 8 bytes on Turin).  VLEKs carry a cspID instead of a hwID.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509

from .trust import EvidenceError

ARC = "1.3.6.1.4.1.3704.1"
OID_STRUCT_VERSION = x509.ObjectIdentifier(ARC + ".1")
OID_PRODUCT_NAME = x509.ObjectIdentifier(ARC + ".2")
OID_BL_SPL = x509.ObjectIdentifier(ARC + ".3.1")
OID_TEE_SPL = x509.ObjectIdentifier(ARC + ".3.2")
OID_SNP_SPL = x509.ObjectIdentifier(ARC + ".3.3")
OID_UCODE_SPL = x509.ObjectIdentifier(ARC + ".3.8")
OID_FMC_SPL = x509.ObjectIdentifier(ARC + ".3.9")
OID_HWID = x509.ObjectIdentifier(ARC + ".4")
OID_CSP_ID = x509.ObjectIdentifier(ARC + ".5")

TCB_OIDS = {"bootloader": OID_BL_SPL, "tee": OID_TEE_SPL, "snp": OID_SNP_SPL,
            "microcode": OID_UCODE_SPL, "fmc": OID_FMC_SPL}


@dataclass(frozen=True)
class AmdKeyInfo:
    """What the AMD extensions of a VCEK or VLEK say."""

    key_type: str                  # "VCEK" or "VLEK"
    struct_version: int | None
    product_name: str | None       # e.g. "Milan-B0", "Genoa", "Turin"
    tcb: dict[str, int]            # bootloader/tee/snp/microcode(/fmc)
    hwid: bytes | None
    csp_id: str | None

    @property
    def product(self) -> str | None:
        """Product family without stepping: "Milan-B0" → "Milan"."""
        return self.product_name.split("-")[0] if self.product_name else None


def _der_int(v: bytes) -> int:
    if len(v) < 3 or v[0] != 0x02 or v[1] != len(v) - 2:
        raise ValueError("not a DER INTEGER")
    return int.from_bytes(v[2:], "big", signed=True)


def _der_string(v: bytes) -> str:
    if len(v) < 2 or v[0] not in (0x16, 0x0C, 0x13) or v[1] != len(v) - 2:
        raise ValueError("not a DER string")
    return v[2:].decode("ascii", "replace")


def der_int(n: int) -> bytes:
    body = n.to_bytes(max(1, (n.bit_length() + 8) // 8), "big", signed=True)
    return bytes([0x02, len(body)]) + body


def der_ia5(s: str) -> bytes:
    b = s.encode("ascii")
    return bytes([0x16, len(b)]) + b


def _ext(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> bytes | None:
    try:
        return cert.extensions.get_extension_for_oid(oid).value.value  # type: ignore[attr-defined]
    except x509.ExtensionNotFound:
        return None


def is_amd_key_cert(cert: x509.Certificate) -> bool:
    """A VCEK/VLEK (as opposed to ASK/ARK): carries a bootloader SPL extension."""
    try:
        return _ext(cert, OID_BL_SPL) is not None
    except Exception:
        return False


def parse_key_info(cert: x509.Certificate) -> AmdKeyInfo:
    """Read the AMD extensions; :class:`EvidenceError` when they are malformed."""
    try:
        tcb = {}
        for name, oid in TCB_OIDS.items():
            v = _ext(cert, oid)
            if v is not None:
                tcb[name] = _der_int(v)
        sv = _ext(cert, OID_STRUCT_VERSION)
        pn = _ext(cert, OID_PRODUCT_NAME)
        hwid = _ext(cert, OID_HWID)
        csp = _ext(cert, OID_CSP_ID)
        return AmdKeyInfo(
            key_type="VLEK" if csp is not None and hwid is None else "VCEK",
            struct_version=_der_int(sv) if sv is not None else None,
            product_name=_der_string(pn) if pn is not None else None,
            tcb=tcb, hwid=bytes(hwid) if hwid is not None else None,
            csp_id=_der_string(csp) if csp is not None else None)
    except (ValueError, x509.DuplicateExtension) as e:
        raise EvidenceError(f"malformed AMD extension in VCEK/VLEK certificate: {e}") from None


def key_info_extensions(*, product_name: str, tcb: dict[str, int], hwid: bytes | None = None,
                        csp_id: str | None = None, struct_version: int = 1
                        ) -> list[x509.UnrecognizedExtension]:
    """The extensions AMD KDS would put into a VCEK/VLEK (used by the simulator)."""
    exts = [x509.UnrecognizedExtension(OID_STRUCT_VERSION, der_int(struct_version)),
            x509.UnrecognizedExtension(OID_PRODUCT_NAME, der_ia5(product_name))]
    for name, oid in TCB_OIDS.items():
        if name in tcb:
            exts.append(x509.UnrecognizedExtension(oid, der_int(tcb[name])))
    if hwid is not None:
        exts.append(x509.UnrecognizedExtension(OID_HWID, hwid))
    if csp_id is not None:
        exts.append(x509.UnrecognizedExtension(OID_CSP_ID, der_ia5(csp_id)))
    return exts
