"""Certificate helpers shared by every verifier: loading, pinning by key, chain building.

Vendor roots are pinned by the SHA-256 of their DER SubjectPublicKeyInfo, never by name: Intel's
QVL sample data ships a *test* "Intel SGX Root CA" with the production name.  Chains are built
from an unordered pool of certificates (whatever came with the evidence or via ``--certs``).
Verified issuer→child links are cached in-process keyed by the DER bytes, so verifying the next
report from the same chip costs one signature check.
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import re
import threading
import warnings
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.utils import CryptographyDeprecationWarning

from . import sigcache
from .trust import Claim, EvidenceError, failed, unverified, verified

_PEM_RE = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


def load_certs(data: bytes | str) -> list[bytes]:
    """PEM (one or many certificates) or DER bytes → list of DER certificates, in file order.

    Raises :class:`EvidenceError` with a plain reason when nothing usable is inside.  The result
    is remembered by the input bytes (a quote's PEM chain is the same in every quote)."""
    if isinstance(data, str):
        data = data.encode()
    data = bytes(data)
    hit = _LOADED.get(data)
    if hit is None:
        hit = tuple(_load_certs(data))
        with _LOCK:
            if len(_LOADED) > 256:
                _LOADED.clear()
            _LOADED[data] = hit
    return list(hit)


_LOADED: dict[bytes, tuple[bytes, ...]] = {}


def _load_certs(data: bytes) -> list[bytes]:
    blocks = _PEM_RE.findall(data)
    if blocks:
        out = []
        for i, block in enumerate(blocks):
            try:
                out.append(der_of(load_der(_pem_der(block))))
            except ValueError as e:
                raise EvidenceError(f"certificate {i + 1} in the PEM file is not valid: {e}") from None
        return out
    if b"-----BEGIN" in data:
        raise EvidenceError("PEM file holds no CERTIFICATE block")
    out = []
    for part in _split_der(bytes(data)):
        try:
            out.append(der_of(load_der(part)))
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


def _pem_der(block: bytes) -> bytes:
    body = block[len(b"-----BEGIN CERTIFICATE-----"):-len(b"-----END CERTIFICATE-----")]
    try:
        return base64.b64decode(re.sub(rb"\s+", b"", body), validate=True)
    except ValueError:
        raise ValueError("the PEM block is not base64") from None


def _parse_der(der: bytes) -> x509.Certificate:
    """Strict parse; a certificate with serial number 0 (every AMD SEV certificate) takes the
    tolerant path of :func:`_load_serial_zero`, today and after ``cryptography`` starts to refuse
    such certificates (it warns that it will)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", CryptographyDeprecationWarning)
        try:
            return x509.load_der_x509_certificate(der)
        except (ValueError, CryptographyDeprecationWarning) as exc:
            cert = _load_serial_zero(der)
            if cert is None:
                if isinstance(exc, CryptographyDeprecationWarning):
                    raise ValueError(str(exc)) from None
                raise
            return cert


def _tlv(data: bytes, o: int) -> tuple[int, int, int]:
    """(tag, start of value, end of value) of the DER item at ``o``; ValueError if malformed."""
    if o + 2 > len(data):
        raise ValueError("truncated DER")
    tag, ln, v = data[o], data[o + 1], o + 2
    if ln & 0x80:
        n = ln & 0x7F
        if not 1 <= n <= 4 or v + n > len(data):
            raise ValueError("bad DER length")
        ln, v = int.from_bytes(data[v:v + n], "big"), v + n
    if v + ln > len(data):
        raise ValueError("truncated DER value")
    return tag, v, v + ln


def _load_serial_zero(der: bytes) -> x509.Certificate | None:
    """A certificate whose serial number is the one-byte INTEGER 0, else None.

    The serial is replaced by 1 (same length) so ``cryptography`` parses names, key, validity and
    extensions; signatures are checked over the *original* TBS bytes (:class:`SerialZeroCertificate`)."""
    try:
        tag, cv, _ = _tlv(der, 0)
        tag_tbs, tv, tbs_end = _tlv(der, cv)
        o = tv
        tag_v, _, vend = _tlv(der, o)
        if tag_v == 0xA0:             # [0] EXPLICIT version
            o = vend
        tag_s, sv, send = _tlv(der, o)
    except ValueError:
        return None
    if tag != 0x30 or tag_tbs != 0x30 or tag_s != 0x02 or der[sv:send] != b"\x00":
        return None
    shadow_der = der[:sv] + b"\x01" + der[send:]
    try:
        shadow = x509.load_der_x509_certificate(shadow_der)
    except ValueError:
        return None
    return SerialZeroCertificate(der, der[cv:tbs_end], shadow)  # type: ignore[return-value]


class SerialZeroCertificate:
    """An ``x509.Certificate`` look-alike for a serial-0 certificate: every attribute comes from a
    parse with serial 1, except the serial number, the DER/TBS bytes and signature checks."""

    serial_number = 0

    def __init__(self, der: bytes, tbs: bytes, shadow: x509.Certificate):
        self._der, self._tbs, self._shadow = der, tbs, shadow

    def __getattr__(self, name: str):
        return getattr(self._shadow, name)

    @property
    def tbs_certificate_bytes(self) -> bytes:
        return self._tbs

    def public_bytes(self, encoding: serialization.Encoding) -> bytes:
        if encoding == serialization.Encoding.DER:
            return self._der
        b64 = base64.encodebytes(self._der).replace(b"\n", b"")
        lines = [b64[i:i + 64] for i in range(0, len(b64), 64)]
        return b"-----BEGIN CERTIFICATE-----\n" + b"\n".join(lines) + b"\n-----END CERTIFICATE-----\n"

    def verify_directly_issued_by(self, issuer: x509.Certificate) -> None:
        if self.issuer != issuer.subject:
            raise ValueError("issuer name does not match")
        verify_cert_signature(self, issuer.public_key())

    def __eq__(self, other: object) -> bool:
        return hasattr(other, "public_bytes") and \
            other.public_bytes(serialization.Encoding.DER) == self._der  # type: ignore[union-attr]

    def __hash__(self) -> int:
        return hash(self._der)


def verify_cert_signature(cert: x509.Certificate, key) -> None:
    """Check ``cert``'s signature over its TBS bytes with ``key`` (InvalidSignature if not)."""
    params = cert.signature_algorithm_parameters
    if isinstance(key, rsa.RSAPublicKey):
        key.verify(cert.signature, cert.tbs_certificate_bytes, params, cert.signature_hash_algorithm)
    elif isinstance(key, ec.EllipticCurvePublicKey):
        key.verify(cert.signature, cert.tbs_certificate_bytes, params)
    else:
        raise InvalidSignature(f"unsupported issuer key type {type(key).__name__}")


_PARSED: dict[bytes, x509.Certificate] = {}
_LOCK = threading.Lock()


def load_der(der: bytes) -> x509.Certificate:
    """Parse one DER certificate (cached by its bytes)."""
    cert = _PARSED.get(der)
    if cert is not None:
        return cert
    try:
        cert = _parse_der(der)
        cert.subject, cert.issuer  # force a parse of the names now
    except Exception as e:  # cryptography raises ValueError and friends
        raise EvidenceError(f"garbage certificate ({len(der)} bytes): {e}") from None
    with _LOCK:
        if len(_PARSED) > 512:
            _PARSED.clear()
        _PARSED[der] = cert
    return cert


@dataclass(frozen=True)
class CertMeta:
    """What chain building compares, read once per certificate (``cryptography`` re-encodes the
    DER and rebuilds name objects on every access)."""

    cert: x509.Certificate
    der: bytes
    subject: bytes          # DER of the subject name
    issuer: bytes           # DER of the issuer name
    not_before: _dt.datetime
    not_after: _dt.datetime


_META: dict[int, CertMeta] = {}


def meta(cert: x509.Certificate) -> CertMeta:
    """:class:`CertMeta` of ``cert``; the entry holds the certificate, so its id stays unique."""
    m = _META.get(id(cert))
    if m is not None and m.cert is cert:
        return m
    m = CertMeta(cert, cert.public_bytes(serialization.Encoding.DER), cert.subject.public_bytes(),
                 cert.issuer.public_bytes(), cert.not_valid_before_utc, cert.not_valid_after_utc)
    with _LOCK:
        if len(_META) > 2048:
            _META.clear()
        _META[id(cert)] = m
    return m


def der_of(cert: x509.Certificate) -> bytes:
    return meta(cert).der


def spki_sha256(cert: x509.Certificate | bytes) -> bytes:
    """SHA-256 of the DER SubjectPublicKeyInfo: the form in which roots are pinned."""
    if isinstance(cert, bytes):
        cert = load_der(cert)
    m = meta(cert)
    hit = _SPKI.get(m.der)
    if hit is None:
        spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                              serialization.PublicFormat.SubjectPublicKeyInfo)
        hit = hashlib.sha256(spki).digest()
        with _LOCK:
            if len(_SPKI) > 1024:
                _SPKI.clear()
            _SPKI[m.der] = hit
    return hit


_SPKI: dict[bytes, bytes] = {}

#: how a root's key digest is written for people (``keepbook keepmgr`` prints it, a user types
#: it after ``--trust-sim-root``, the trust vector shows it): ``sha256:`` and 64 hex digits
FINGERPRINT_PREFIX = "sha256:"


def format_fingerprint(spki_digest: bytes) -> str:
    """``sha256:<hex>`` of a root's SPKI SHA-256 (the form roots are pinned in)."""
    return FINGERPRINT_PREFIX + bytes(spki_digest).hex()


def parse_fingerprint(text: str) -> bytes:
    """A root fingerprint as typed (``sha256:`` then 64 hex digits; case, spaces and colons
    between byte pairs are forgiven) → the 32-byte SPKI digest; ValueError saying the form."""
    raw = str(text).strip()
    if not raw.lower().startswith(FINGERPRINT_PREFIX):
        raise ValueError(f"{raw[:80]!r} is not a root fingerprint: write sha256: and 64 hex digits, "
                         "as `keepbook keepmgr` prints it")
    digits = raw[len(FINGERPRINT_PREFIX):].replace(":", "").replace(" ", "").lower()
    if len(digits) != 64 or any(c not in "0123456789abcdef" for c in digits):
        raise ValueError(f"{raw[:80]!r} is not a root fingerprint: after sha256: come exactly 64 "
                         f"hex digits (got {len(digits)} characters)")
    return bytes.fromhex(digits)


def cert_name(cert: x509.Certificate) -> str:
    cns = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(cns[0].value) if cns else cert.subject.rfc4514_string()


def issued_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
    """Whether ``parent`` signed ``child`` (names match and the signature verifies).  The answer
    is remembered by the exact bytes of both certificates (:mod:`.sigcache`)."""
    if meta(child).issuer != meta(parent).subject:
        return False

    def check() -> bool:
        try:
            verify_cert_signature(child, parent.public_key())
            return True
        except (InvalidSignature, ValueError, TypeError):
            return False
    return sigcache.remember("cert", (der_of(child), der_of(parent)), check)


@dataclass
class ChainResult:
    """Outcome of building leaf → … → root from a pool of certificates."""

    ok: bool
    reason: str
    path: list[x509.Certificate] = field(default_factory=list)  # leaf first, root last
    root_label: str | None = None      # e.g. "AMD ARK-Milan" or "SIMULATED sev-snp root"
    simulated: bool = False
    #: SPKI SHA-256 of the self-signed root the walk reached, trusted or not (None if it reached
    #: none): a client can name the root it was asked to trust
    root: bytes | None = None

    @property
    def detail(self) -> dict[str, str | bool]:
        """The claim detail that names the root the walk reached, if any: ``root`` (its
        fingerprint), ``root_name``, and ``root_trusted`` (pinned, or accepted as simulated)."""
        if self.root is None or not self.path:
            return {}
        return {"root": format_fingerprint(self.root), "root_name": cert_name(self.path[-1]),
                "root_trusted": self.root_label is not None}


def _valid_at(cert: x509.Certificate, at: _dt.datetime) -> bool:
    m = meta(cert)
    return m.not_before <= at <= m.not_after


def _by_validity(pool: Iterable[x509.Certificate], now: _dt.datetime) -> list[x509.Certificate]:
    """Certificates valid at ``now`` first, then the longest-lived; ties by DER bytes, so the
    result never depends on the order the certificates were given in."""
    return sorted(pool, key=lambda c: (not _valid_at(c, now), -meta(c).not_after.timestamp(),
                                       meta(c).der))


def by_validity(pool: Iterable[x509.Certificate], at: _dt.datetime | None) -> list[x509.Certificate]:
    return _by_validity(pool, _utc(at))


def _utc(at: _dt.datetime | None) -> _dt.datetime:
    now = at or _dt.datetime.now(_dt.timezone.utc)
    return now if now.tzinfo else now.replace(tzinfo=_dt.timezone.utc)


SIMULATED_LABEL = "SIMULATED root of this installation"


def build_chain(leaf: x509.Certificate, pool: Iterable[x509.Certificate], *,
                pinned: Mapping[bytes, str], simulated: Sequence[bytes] | Mapping[bytes, str] = (),
                at: _dt.datetime | None = None, vendor: str = "vendor",
                fetch_hint: str = "") -> ChainResult:
    """Walk issuers from ``leaf`` to a self-signed root and decide whether that root is trusted.

    ``pinned`` maps SPKI SHA-256 → label of hardware vendor roots; ``simulated`` lists SPKI
    digests of simulated roots the caller's trust policy accepts (a mapping gives each one the
    label that says whose root it is; a plain list means this installation's own).  ``at`` is
    the time the chain must be valid at (default: now)."""
    now = _utc(at)
    pool = [c for c in pool if c is not leaf and meta(c).der != meta(leaf).der]
    path = [leaf]
    cur = leaf
    ordered = _by_validity(pool, now)
    seen = {meta(leaf).der}
    for _ in range(8):
        m = meta(cur)
        if m.issuer == m.subject and issued_by(cur, cur):
            break  # self-signed: the root
        # several certificates may carry the issuer's name and key (Intel renewed its TCB
        # signing certificate with the same key and serial): the one valid at ``now`` wins,
        # whatever the order they were given in
        parent = next((p for p in ordered if meta(p).subject == m.issuer
                       and meta(p).der not in seen and issued_by(cur, p)), None)
        if parent is None:
            named = [p for p in pool if meta(p).subject == m.issuer]
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
        seen.add(meta(parent).der)
        cur = parent
    else:
        return ChainResult(False, "certificate chain is too long (loop?)", path)
    digest = spki_sha256(cur)
    label = pinned.get(digest)
    is_sim = False
    if label is None and digest in set(simulated):
        is_sim = True
        label = simulated[digest] if isinstance(simulated, Mapping) else SIMULATED_LABEL
    if label is None:
        return ChainResult(False, f"the chain ends in '{cert_name(cur)}' whose key (SPKI sha256 "
                           f"{digest.hex()[:16]}…) is not a pinned {vendor} root — a test root, a "
                           f"look-alike, or a simulated root that your trust policy does not allow "
                           f"(accept simulated Keeps only on purpose: --allow-simulated)",
                           path, root=digest)
    for c in path:
        if not _valid_at(c, now):
            return ChainResult(False, f"'{cert_name(c)}' is valid only from "
                               f"{c.not_valid_before_utc:%Y-%m-%d} to {c.not_valid_after_utc:%Y-%m-%d}, "
                               f"not at {now:%Y-%m-%d %H:%M}Z (verify archived evidence with --at)",
                               path, label, is_sim, digest)
    names = " → ".join(cert_name(c) for c in reversed(path))
    return ChainResult(True, f"{names}, root pinned by key ({label})", path, label, is_sim, digest)


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return True  # v1-style CA without the extension: the signature check decides


def load_pool(certs: Sequence[bytes]) -> list[x509.Certificate]:
    """DER list → parsed certificates (raises EvidenceError for garbage)."""
    return [load_der(bytes(d)) for d in certs]


# -- revocation lists ---------------------------------------------------------------------------

_CRLS: dict[bytes, tuple[x509.CertificateRevocationList, bytes]] = {}


def load_crl(der: bytes) -> x509.CertificateRevocationList:
    """Parse one DER CRL (cached by its bytes); EvidenceError when it is not one."""
    return _crl_and_issuer(der)[0]


def _crl_and_issuer(der: bytes) -> tuple[x509.CertificateRevocationList, bytes]:
    hit = _CRLS.get(der)
    if hit is None:
        try:
            crl = x509.load_der_x509_crl(der)
            hit = (crl, crl.issuer.public_bytes())
        except Exception:
            raise EvidenceError("a CRL does not parse (expected a DER or PEM X.509 CRL)") from None
        with _LOCK:
            if len(_CRLS) > 256:
                _CRLS.clear()
            _CRLS[der] = hit
    return hit


def crl_signed_by(der: bytes, crl: x509.CertificateRevocationList, issuer: x509.Certificate) -> bool:
    """Whether ``issuer`` signed the CRL (remembered by the exact bytes of both)."""
    def check() -> bool:
        try:
            return crl.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return False
    return sigcache.remember("crl", (der, der_of(issuer)), check)


def check_crls(crls: Sequence[bytes], chain: Iterable[x509.Certificate],
               at: _dt.datetime | None) -> tuple[Claim, list[str]]:
    """The ``crl`` claim for ``chain`` (every certificate of the verified chains, roots included)
    and the CRLs' time problems (``nextUpdate`` passed, ``thisUpdate`` in the future).

    A CRL is used only when its issuer is a certificate of ``chain`` — which chains to the pinned
    root — and it must be signed by that certificate; a CRL of an issuer outside the chain (the
    other Intel PCK CA, another product's ARK) is reported and ignored, never a failure."""
    now = _utc(at)
    certs = list({der_of(c): c for c in chain}.values())
    by_subject: dict[bytes, list[x509.Certificate]] = {}
    for c in certs:
        by_subject.setdefault(meta(c).subject, []).append(c)
    used: list[tuple[x509.CertificateRevocationList, x509.Certificate]] = []
    ignored: list[str] = []
    times: list[str] = []
    for der in crls:
        crl, issuer_name = _crl_and_issuer(der)
        issuers = by_subject.get(issuer_name, [])
        if not issuers:
            ignored.append(_cn(crl.issuer))
            continue
        signer = next((c for c in issuers if crl_signed_by(der, crl, c)), None)
        if signer is None:
            return failed("crl", f"the CRL of '{_cn(crl.issuer)}' is not signed by that "
                          "certificate of the chain: altered, or from a look-alike issuer"), times
        nxt = crl.next_update_utc
        if nxt is not None and now > nxt:
            times.append(f"CRL of {cert_name(signer)} expired {nxt:%Y-%m-%d %H:%M}Z (nextUpdate)")
        if crl.last_update_utc > now:
            times.append(f"CRL of {cert_name(signer)} was issued {crl.last_update_utc:%Y-%m-%d %H:%M}Z, "
                         f"after {now:%Y-%m-%d %H:%M}Z")
        used.append((crl, signer))
    for crl, signer in used:
        for c in certs:
            if meta(c).issuer == meta(signer).subject and c is not signer \
                    and crl.get_revoked_certificate_by_serial_number(c.serial_number) is not None:
                return failed("crl", f"'{cert_name(c)}' (serial {c.serial_number:x}) is REVOKED by "
                              f"{cert_name(signer)}'s CRL: the platform's keys must not be trusted"), times
    skipped = (f"; ignored {len(ignored)} CRL(s) whose issuer is not in this chain "
               f"({', '.join(sorted(set(ignored)))})" if ignored else "")
    if not used:
        if not ignored:
            return unverified("crl", "no CRLs given: revocation was not checked"), times
        return unverified("crl", "none of the given CRLs is for this chain: revocation was not "
                          f"checked{skipped}", ignored=ignored), times
    names = ", ".join(sorted({cert_name(s) for _, s in used}))
    return verified("crl", f"{len(used)} CRL(s) signed by their issuer in the chain ({names}); "
                    f"nothing in the chain is revoked{skipped}", ignored=ignored), times


def _cn(name: x509.Name) -> str:
    cns = name.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(cns[0].value) if cns else name.rfc4514_string()
