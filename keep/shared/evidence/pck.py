"""Intel PCK certificate SGX extensions (OID 1.2.840.113741.1.13.1) — parse and build.

The PCK certificate says which platform (FMSPC, PCE id) at which TCB (16 CPU SVN components and
the PCE SVN) it was issued for; the TCB status is looked up with these in Intel's TCB info.
A minimal DER reader/writer is enough: the structure is SEQUENCE of (OID, value) pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509

from .certs import der_of
from .trust import EvidenceError

SGX_EXT = "1.2.840.113741.1.13.1"
OID_SGX_EXT = x509.ObjectIdentifier(SGX_EXT)


# -- tiny DER ---------------------------------------------------------------------------------

def _tlv(data: bytes, o: int) -> tuple[int, bytes, int]:
    if o + 2 > len(data):
        raise ValueError("truncated DER")
    tag, ln = data[o], data[o + 1]
    o += 2
    if ln & 0x80:
        n = ln & 0x7F
        if n == 0 or n > 4 or o + n > len(data):
            raise ValueError("bad DER length")
        ln = int.from_bytes(data[o:o + n], "big")
        o += n
    if o + ln > len(data):
        raise ValueError("truncated DER value")
    return tag, data[o:o + ln], o + ln


def _items(data: bytes) -> list[tuple[int, bytes]]:
    out, o = [], 0
    while o < len(data):
        tag, val, o = _tlv(data, o)
        out.append((tag, val))
    return out


def _oid_str(b: bytes) -> str:
    first = b[0]
    parts = [first // 40, first % 40]
    n = 0
    for c in b[1:]:
        n = (n << 7) | (c & 0x7F)
        if not c & 0x80:
            parts.append(n)
            n = 0
    return ".".join(map(str, parts))


def _enc_len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    b = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(b)]) + b


def enc(tag: int, val: bytes) -> bytes:
    return bytes([tag]) + _enc_len(len(val)) + val


def enc_oid(s: str) -> bytes:
    p = [int(x) for x in s.split(".")]
    out = bytearray([p[0] * 40 + p[1]])
    for n in p[2:]:
        chunk = [n & 0x7F]
        n >>= 7
        while n:
            chunk.append(0x80 | (n & 0x7F))
            n >>= 7
        out += bytes(reversed(chunk))
    return enc(0x06, bytes(out))


def enc_int(n: int) -> bytes:
    return enc(0x02, n.to_bytes(max(1, (n.bit_length() + 8) // 8), "big", signed=True))


# -- the extension ------------------------------------------------------------------------------

@dataclass(frozen=True)
class PckInfo:
    ppid: bytes
    cpusvn_components: tuple[int, ...]   # 16 SGX TCB component SVNs
    pcesvn: int
    cpusvn: bytes
    pceid: bytes
    fmspc: bytes
    sgx_type: int | None


_HAS_EXT: dict[bytes, bool] = {}


def has_sgx_ext(cert: x509.Certificate) -> bool:
    """Whether ``cert`` carries Intel's SGX extension (a PCK certificate); remembered by DER."""
    der = der_of(cert)
    hit = _HAS_EXT.get(der)
    if hit is None:
        try:
            cert.extensions.get_extension_for_oid(OID_SGX_EXT)
            hit = True
        except Exception:  # ExtensionNotFound, or extensions that do not parse
            hit = False
        if len(_HAS_EXT) > 1024:
            _HAS_EXT.clear()
        _HAS_EXT[der] = hit
    return hit


_PCK_INFO: dict[bytes, PckInfo] = {}


def parse_pck(cert: x509.Certificate) -> PckInfo:
    """:func:`_parse_pck`, remembered by the certificate's DER bytes."""
    der = der_of(cert)
    info = _PCK_INFO.get(der)
    if info is None:
        info = _parse_pck(cert)
        if len(_PCK_INFO) > 256:
            _PCK_INFO.clear()
        _PCK_INFO[der] = info
    return info


def _parse_pck(cert: x509.Certificate) -> PckInfo:
    """Read the SGX extension of a PCK certificate (EvidenceError when absent or malformed)."""
    try:
        raw = cert.extensions.get_extension_for_oid(OID_SGX_EXT).value.value  # type: ignore[attr-defined]
    except x509.ExtensionNotFound:
        raise EvidenceError("the PCK certificate has no Intel SGX extension (not a PCK certificate)") from None
    try:
        (tag, seq), = _items(raw)
        vals: dict[str, tuple[int, bytes]] = {}
        for _, pair in _items(seq):
            (t1, oid), (t2, v) = _items(pair)[:2]
            vals[_oid_str(oid)] = (t2, v)
        comps = [0] * 16
        pcesvn, cpusvn = 0, b""
        for _, pair in _items(vals[SGX_EXT + ".2"][1]):
            (_, oid), (t, v) = _items(pair)[:2]
            idx = int(_oid_str(oid).rsplit(".", 1)[1])
            if 1 <= idx <= 16:
                comps[idx - 1] = int.from_bytes(v, "big")
            elif idx == 17:
                pcesvn = int.from_bytes(v, "big")
            elif idx == 18:
                cpusvn = v
        sgx_type = vals.get(SGX_EXT + ".5")
        return PckInfo(ppid=vals[SGX_EXT + ".1"][1], cpusvn_components=tuple(comps), pcesvn=pcesvn,
                       cpusvn=cpusvn, pceid=vals[SGX_EXT + ".3"][1], fmspc=vals[SGX_EXT + ".4"][1],
                       sgx_type=int.from_bytes(sgx_type[1], "big") if sgx_type else None)
    except (ValueError, KeyError) as e:
        raise EvidenceError(f"malformed SGX extension in the PCK certificate: {e}") from None


def build_pck_extension(*, fmspc: bytes, pceid: bytes = b"\x00\x00", components: tuple[int, ...],
                        pcesvn: int, ppid: bytes = bytes(16)) -> x509.UnrecognizedExtension:
    """The SGX extension Intel puts into PCK certificates (used by the simulator)."""
    def pair(oid: str, val: bytes) -> bytes:
        return enc(0x30, enc_oid(oid) + val)
    tcb = b"".join(pair(f"{SGX_EXT}.2.{i + 1}", enc_int(c)) for i, c in enumerate(components))
    tcb += pair(f"{SGX_EXT}.2.17", enc_int(pcesvn))
    tcb += pair(f"{SGX_EXT}.2.18", enc(0x04, bytes(components)))
    body = (pair(f"{SGX_EXT}.1", enc(0x04, ppid)) + pair(f"{SGX_EXT}.2", enc(0x30, tcb))
            + pair(f"{SGX_EXT}.3", enc(0x04, pceid)) + pair(f"{SGX_EXT}.4", enc(0x04, fmspc))
            + pair(f"{SGX_EXT}.5", enc(0x0A, b"\x00")))
    return x509.UnrecognizedExtension(OID_SGX_EXT, enc(0x30, body))
