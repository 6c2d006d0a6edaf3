"""Certificate helpers shared by every verifier: loading, pinning by key, chain building.

Vendor roots are pinned by the SHA-256 of their DER SubjectPublicKeyInfo, never by name: Intel's
QVL sample data ships a *test* "Intel SGX Root CA" with the production name.  Chains are built
from an unordered pool of certificates (whatever came with the evidence or via ``--certs``).
Verified issuer→child links are cached in-process keyed by the DER bytes, so verifying the next
report from the same chip costs one signature check.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import re
import threading
import warnings
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from .trust import EvidenceError

_PEM_RE = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


def load_certs(data: bytes | str) -> list[bytes]:
    """PEM (one or many certificates) or DER bytes → list of DER certificates, in file order.

    Raises :class:`EvidenceError` with a plain reason when nothing usable is inside."""
    if isinstance(data, str):
        data = data.encode()
    blocks = _PEM_RE.findall(data)
    if blocks:
        out = []
        for i, block in enumerate(blocks):
            try:
                out.append(_parse_pem(block).public_bytes(serialization.Encoding.DER))
            except ValueError as e:
                raise EvidenceError(f"certificate {i + 1} in the PEM file is not valid: {e}") from None
        return out
    if b"-----BEGIN" in data:
        raise EvidenceError("PEM file holds no CERTIFICATE block")
    out = []
    for part in _split_der(bytes(data)):
        try:
            out.append(load_der(part).public_bytes(serialization.Encoding.DER))
        except EvidenceError:
            raise EvidenceError("not a certificate: neither PEM nor DER X.509") from None
    return out


def _split_der(data: bytes) -> list[bytes]:
    """One DER certificate, or several concatenated (Intel's sample quotes do that)."""
    parts, o = [], 0
    while o < len(data):
        if data[o] != 0x30 or o + 2 > len(data):
            return [data]
        ln, hdr = data[o + 1], 2
        if ln & 0x80:
            n = ln & 0x7F
            if not 1 <= n <= 4:
                return [data]
            ln, hdr = int.from_bytes(data[o + 2:o + 2 + n], "big"), 2 + n
        end = o + hdr + ln
        if end > len(data):
            return [data]
        parts.append(data[o:end])
        o = end
    return parts or [data]


def _parse_pem(block: bytes) -> x509.Certificate:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # AMD VCEKs carry serial number 0
        return x509.load_pem_x509_certificate(block)


_PARSED: dict[bytes, x509.Certificate] = {}
_LOCK = threading.Lock()


def load_der(der: bytes) -> x509.Certificate:
    """Parse one DER certificate (cached by its bytes)."""
    cert = _PARSED.get(der)
    if cert is not None:
        return cert
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cert = x509.load_der_x509_certificate(der)
            cert.subject, cert.issuer  # force a parse of the names now
    except Exception as e:  # cryptography raises ValueError and friends
        raise EvidenceError(f"garbage certificate ({len(der)} bytes): {e}") from None
    with _LOCK:
        if len(_PARSED) > 512:
            _PARSED.clear()
        _PARSED[der] = cert
    return cert


def spki_sha256(cert: x509.Certificate | bytes) -> bytes:
    """SHA-256 of the DER SubjectPublicKeyInfo: the form in which roots are pinned."""
    if isinstance(cert, bytes):
        cert = load_der(cert)
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).digest()


def cert_name(cert: x509.Certificate) -> str:
    cns = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(cns[0].value) if cns else cert.subject.rfc4514_string()


_LINKS: dict[tuple[bytes, bytes], bool] = {}


def issued_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
    """Whether ``parent`` signed ``child`` (names match and the signature verifies). Cached."""
    key = (child.tbs_certificate_bytes + child.signature, parent.public_bytes(serialization.Encoding.DER))
    hit = _LINKS.get(key)
    if hit is not None:
        return hit
    try:
        child.verify_directly_issued_by(parent)
        ok = True
    except Exception:
        ok = False
    with _LOCK:
        if len(_LINKS) > 1024:
            _LINKS.clear()
        _LINKS[key] = ok
    return ok


@dataclass
class ChainResult:
    """Outcome of building leaf → … → root from a pool of certificates."""

    ok: bool
    reason: str
    path: list[x509.Certificate] = field(default_factory=list)  # leaf first, root last
    root_label: str | None = None      # e.g. "AMD ARK-Milan" or "SIMULATED sev-snp root"
    simulated: bool = False


def _valid_at(cert: x509.Certificate, at: _dt.datetime) -> bool:
    return cert.not_valid_before_utc <= at <= cert.not_valid_after_utc


def build_chain(leaf: x509.Certificate, pool: Iterable[x509.Certificate], *,
                pinned: Mapping[bytes, str], simulated: Sequence[bytes] = (),
                at: _dt.datetime | None = None, vendor: str = "vendor",
                fetch_hint: str = "") -> ChainResult:
    """Walk issuers from ``leaf`` to a self-signed root and decide whether that root is trusted.

    ``pinned`` maps SPKI SHA-256 → label of hardware vendor roots; ``simulated`` lists SPKI
    digests of simulated roots the caller's trust policy accepts.  ``at`` is the time the chain
    must be valid at (default: now)."""
    now = at or _dt.datetime.now(_dt.timezone.utc)
    if now.tzinfo is None:
        now = now.replace(tzinfo=_dt.timezone.utc)
    pool = [c for c in pool if c is not leaf]
    path = [leaf]
    cur = leaf
    for _ in range(8):
        if cur.issuer == cur.subject and issued_by(cur, cur):
            break  # self-signed: the root
        parent = next((p for p in pool if p.subject == cur.issuer and p not in path
                       and issued_by(cur, p)), None)
        if parent is None:
            named = [p for p in pool if p.subject == cur.issuer]
            if named:
                why = (f"'{cert_name(cur)}' claims issuer '{cur.issuer.rfc4514_string()}' but no "
                       f"given certificate with that name signed it (mixed products or forged "
                       f"certificate)")
            else:
                why = (f"the issuer of '{cert_name(cur)}' ('{cur.issuer.rfc4514_string()}') was "
                       f"not given; {fetch_hint or 'pass the intermediate and root certificates with --certs'}")
            return ChainResult(False, why, path)
        if parent.extensions and not _is_ca(parent):
            return ChainResult(False, f"'{cert_name(parent)}' is not a CA certificate but issued "
                               f"'{cert_name(cur)}'", path)
        path.append(parent)
        cur = parent
    else:
        return ChainResult(False, "certificate chain is too long (loop?)", path)
    digest = spki_sha256(cur)
    label = pinned.get(digest)
    is_sim = False
    if label is None and digest in set(simulated):
        label, is_sim = "SIMULATED root of this installation", True
    if label is None:
        return ChainResult(False, f"the chain ends in '{cert_name(cur)}' whose key (SPKI sha256 "
                           f"{digest.hex()[:16]}…) is not a pinned {vendor} root — a test root, a "
                           f"look-alike, or a simulated root that your trust policy does not allow "
                           f"(accept simulated Keeps only on purpose: --allow-simulated)",
                           path)
    for c in path:
        if not _valid_at(c, now):
            return ChainResult(False, f"'{cert_name(c)}' is valid only from "
                               f"{c.not_valid_before_utc:%Y-%m-%d} to {c.not_valid_after_utc:%Y-%m-%d}, "
                               f"not at {now:%Y-%m-%d %H:%M}Z (verify archived evidence with --at)",
                               path)
    names = " → ".join(cert_name(c) for c in reversed(path))
    return ChainResult(True, f"{names}, root pinned by key ({label})", path, label, is_sim)


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return True  # v1-style CA without the extension: the signature check decides


def load_pool(certs: Sequence[bytes]) -> list[x509.Certificate]:
    """DER list → parsed certificates (raises EvidenceError for garbage)."""
    return [load_der(bytes(d)) for d in certs]
