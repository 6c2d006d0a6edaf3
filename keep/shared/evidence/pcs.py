"""Intel PCS collateral: TCB info, QE identity, CRLs and their issuer chains.

Intel signs the *exact bytes* of the ``tcbInfo`` / ``enclaveIdentity`` JSON object as served
(``{"tcbInfo":{…},"signature":"<hex r‖s>"}``), so the signed text is cut out of the response
verbatim, never re-serialised.  Two input forms are understood and can be mixed:

* the dcap-qvl ``QuoteCollateralV3`` JSON (``tcb_info`` string + ``tcb_info_signature`` hex, the
  same for ``qe_identity``, PEM issuer chains, ``root_ca_crl`` / ``pck_crl`` as hex DER);
* raw files: PCS response bodies for TCB info and QE identity, PEM issuer chains (the
  ``*-Issuer-Chain`` headers, URL-decoded), CRLs in DER, PEM or hex.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from cryptography import x509

from .certs import load_certs
from .trust import EvidenceError


@dataclass(frozen=True)
class SignedJson:
    """A signed PCS object: the parsed body, the exact signed text, and the raw r‖s signature."""

    body: dict[str, Any]
    signed: bytes
    signature: bytes

    @property
    def issue_date(self) -> _dt.datetime:
        return parse_time(self.body.get("issueDate", ""))

    @property
    def next_update(self) -> _dt.datetime:
        return parse_time(self.body.get("nextUpdate", ""))


@dataclass
class Collateral:
    tcb_info: SignedJson | None = None
    qe_identity: SignedJson | None = None
    certs: list[bytes] = field(default_factory=list)   # DER: issuer chains
    crls: list[bytes] = field(default_factory=list)    # DER CRLs

    def merge(self, other: "Collateral") -> "Collateral":
        return Collateral(other.tcb_info or self.tcb_info, other.qe_identity or self.qe_identity,
                          self.certs + other.certs, self.crls + other.crls)


def parse_time(s: str) -> _dt.datetime:
    try:
        t = _dt.datetime.fromisoformat(s.replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        raise EvidenceError(f"collateral has an invalid date {s!r}") from None
    return t if t.tzinfo else t.replace(tzinfo=_dt.timezone.utc)


def _sig(hexstr: Any, what: str) -> bytes:
    try:
        sig = bytes.fromhex(str(hexstr))
    except ValueError:
        raise EvidenceError(f"{what} signature is not hex") from None
    if len(sig) != 64:
        raise EvidenceError(f"{what} signature must be 64 bytes (r‖s), got {len(sig)}")
    return sig


def _cut_object(text: str, key: str) -> str:
    """The exact text of the top-level ``key`` object in a PCS response (what Intel signed)."""
    m = re.search(r'"%s"\s*:\s*' % re.escape(key), text)
    if not m:
        raise EvidenceError(f"collateral has no {key!r} object")
    _, end = json.JSONDecoder().raw_decode(text, m.end())
    return text[m.end():end]


def _crl_der(data: bytes) -> bytes:
    if b"-----BEGIN X509 CRL" in data:
        return x509.load_pem_x509_crl(data).public_bytes(_DER)
    s = data.strip()
    if re.fullmatch(rb"[0-9a-fA-F]+", s or b"x"):
        return bytes.fromhex(s.decode())
    return bytes(data)


from cryptography.hazmat.primitives.serialization import Encoding as _Enc  # noqa: E402
_DER = _Enc.DER


def load_part(data: bytes) -> Collateral:
    """One collateral file (any of the supported forms) → :class:`Collateral`."""
    data = bytes(data)
    text = data.lstrip()
    if text.startswith(b"{"):
        try:
            s = data.decode()
            obj = json.loads(s)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise EvidenceError(f"collateral JSON does not parse: {e}") from None
        if "tcb_info" in obj or "qe_identity" in obj:
            return from_qvl(obj)
        if "tcbInfo" in obj:
            signed = _cut_object(s, "tcbInfo")
            return Collateral(tcb_info=SignedJson(json.loads(signed), signed.encode(),
                                                  _sig(obj.get("signature"), "TCB info")))
        if "enclaveIdentity" in obj:
            signed = _cut_object(s, "enclaveIdentity")
            return Collateral(qe_identity=SignedJson(json.loads(signed), signed.encode(),
                                                     _sig(obj.get("signature"), "QE identity")))
        raise EvidenceError("collateral JSON is neither dcap-qvl collateral nor a PCS TCB info / "
                            "QE identity response")
    if b"-----BEGIN CERTIFICATE" in data:
        return Collateral(certs=load_certs(data))
    try:
        der = _crl_der(data)
        x509.load_der_x509_crl(der)
        return Collateral(crls=[der])
    except Exception:
        raise EvidenceError("collateral file is not JSON, a PEM certificate chain or a CRL") from None


def from_qvl(obj: Mapping[str, Any]) -> Collateral:
    """dcap-qvl QuoteCollateralV3 JSON (``tcb_info`` holds the exact signed text)."""
    col = Collateral()
    try:
        if obj.get("tcb_info"):
            t = str(obj["tcb_info"])
            col.tcb_info = SignedJson(json.loads(t), t.encode(), _sig(obj.get("tcb_info_signature"), "TCB info"))
        if obj.get("qe_identity"):
            t = str(obj["qe_identity"])
            col.qe_identity = SignedJson(json.loads(t), t.encode(),
                                         _sig(obj.get("qe_identity_signature"), "QE identity"))
    except json.JSONDecodeError as e:
        raise EvidenceError(f"collateral tcb_info/qe_identity is not JSON: {e}") from None
    for k in ("tcb_info_issuer_chain", "qe_identity_issuer_chain", "pck_crl_issuer_chain"):
        if obj.get(k):
            col.certs += load_certs(str(obj[k]).encode())
    for k in ("root_ca_crl", "pck_crl"):
        v = obj.get(k)
        if v:
            try:
                col.crls.append(_crl_der(v if isinstance(v, bytes) else (bytes(v) if isinstance(v, list) else str(v).encode())))
            except Exception:
                raise EvidenceError(f"collateral {k} is not a CRL") from None
    return col


def as_collateral(c: Any) -> Collateral | None:
    """Whatever a caller passes as ``collateral=`` → :class:`Collateral` (None stays None).

    Accepts a :class:`Collateral`, a dcap-qvl mapping, ``{"parts": [bytes, …]}``, raw bytes of
    one file, or an iterable of raw files."""
    if c is None:
        return None
    if isinstance(c, Collateral):
        return c
    if isinstance(c, (bytes, bytearray)):
        return load_part(bytes(c))
    if isinstance(c, Mapping):
        if "parts" in c:
            return load_parts(c["parts"])
        return from_qvl(c)
    return load_parts(c)


def load_parts(parts: Iterable[bytes]) -> Collateral:
    col = Collateral()
    for p in parts:
        col = col.merge(load_part(p))
    return col
