"""The one X.509 certificate builder: the one-use channel certificates (client and Keep) and the
simulated vendors' chains are all made here.  Shared core: it holds no key of its own — every
key is the caller's, passed in and never kept."""

from __future__ import annotations

import datetime as _dt
from typing import Any, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

#: RSASSA-PSS with SHA-384 and a 48-byte salt: how AMD's ARK and ASK sign.
RSA_PSS_SHA384 = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)


def name(common_name: str, organization: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attrs)


def build_certificate(subject: x509.Name, public_key: Any, issuer: x509.Name, issuer_key: Any, *,
                      ca: bool, not_before: _dt.datetime, not_after: _dt.datetime,
                      extensions: Sequence[x509.ExtensionType] = (), pss: bool = False,
                      hash_alg: hashes.HashAlgorithm | None = None,
                      path_length: int | None = None, ca_key_usage: bool = True) -> bytes:
    """A DER certificate.  RSA issuers sign with SHA-384 (RSASSA-PSS when ``pss``), others with
    ``hash_alg`` (default SHA-256).  A CA gets keyCertSign/cRLSign key usage unless
    ``ca_key_usage`` is false (a self-signed TLS certificate must not restrict its key)."""
    b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
         .serial_number(x509.random_serial_number()).not_valid_before(not_before)
         .not_valid_after(not_after)
         .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True))
    if ca and ca_key_usage:
        b = b.add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                            critical=True)
    for ext in extensions:
        b = b.add_extension(ext, critical=False)
    if isinstance(issuer_key, rsa.RSAPrivateKey):
        cert = b.sign(issuer_key, hashes.SHA384(), rsa_padding=RSA_PSS_SHA384 if pss else None)
    else:
        cert = b.sign(issuer_key, hash_alg or hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.DER)


def self_signed(key: Any, common_name: str, *, days: int = 7) -> bytes:
    """A short-lived self-signed certificate for a one-use key.  Its only job is to carry the
    public key: peers pin that key exactly, never a name or a CA."""
    now = _dt.datetime.now(_dt.timezone.utc)
    subject = name(common_name)
    return build_certificate(subject, key.public_key(), subject, key, ca=True, path_length=0,
                             ca_key_usage=False,
                             not_before=now - _dt.timedelta(minutes=5),
                             not_after=now + _dt.timedelta(days=days))


def spki(certificate_der: bytes) -> bytes:
    """The DER SubjectPublicKeyInfo of a certificate: what pinning compares."""
    return x509.load_der_x509_certificate(certificate_der).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def key_spki(private_or_public_key: Any) -> bytes:
    key = getattr(private_or_public_key, "public_key", None)
    pub = key() if callable(key) else private_or_public_key
    return pub.public_bytes(serialization.Encoding.DER,
                            serialization.PublicFormat.SubjectPublicKeyInfo)
