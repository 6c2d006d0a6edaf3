"""Public keys a user supplies as trust anchors (Arm CCA platform keys): PEM, JWK or DER.

``load_public_keys`` turns a file into DER SubjectPublicKeyInfo blobs — the form the verifiers
take in ``certs`` for evidence kinds whose anchor is a bare key, not a certificate chain.
Accepted: ``-----BEGIN PUBLIC KEY-----`` PEM (one or more), PEM certificates (their key), a JWK
or a JWK set (EC P-256/P-384/P-521), DER SubjectPublicKeyInfo or a DER certificate.
"""

from __future__ import annotations

import base64
import json
import re

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from .certs import load_certs, load_der
from .trust import EvidenceError

_PEM_KEY = re.compile(rb"-----BEGIN PUBLIC KEY-----.+?-----END PUBLIC KEY-----", re.S)
_CURVES = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1(), "P-521": ec.SECP521R1()}
_SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _b64url(v: object, what: str) -> bytes:
    if not isinstance(v, str):
        raise EvidenceError(f"JWK {what} must be a base64url string")
    try:
        return base64.urlsafe_b64decode(v + "=" * (-len(v) % 4))
    except ValueError:
        raise EvidenceError(f"JWK {what} is not base64url") from None


def jwk_to_spki(jwk: object) -> bytes:
    """One JWK (EC only: CCA keys are ECDSA) → DER SubjectPublicKeyInfo."""
    if not isinstance(jwk, dict) or jwk.get("kty") != "EC":
        raise EvidenceError("JWK must be an EC key ({\"kty\": \"EC\", \"crv\": …, \"x\": …, \"y\": …})")
    curve = _CURVES.get(str(jwk.get("crv")))
    if curve is None:
        raise EvidenceError(f"JWK curve {jwk.get('crv')!r} is not P-256, P-384 or P-521")
    size = (curve.key_size + 7) // 8
    x, y = _b64url(jwk.get("x"), "x"), _b64url(jwk.get("y"), "y")
    if len(x) != size or len(y) != size:
        raise EvidenceError(f"JWK x/y must be {size} bytes for {jwk['crv']}")
    try:
        key = ec.EllipticCurvePublicKey.from_encoded_point(curve, b"\x04" + x + y)
    except ValueError:
        raise EvidenceError("JWK point is not on its curve") from None
    return key.public_bytes(*_SPKI)


def load_public_keys(data: bytes) -> list[bytes]:
    """A key file → DER SubjectPublicKeyInfo list; EvidenceError when nothing usable is inside."""
    data = bytes(data)
    stripped = data.strip()
    if stripped.startswith(b"{"):
        try:
            doc = json.loads(stripped.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise EvidenceError(f"key file is not valid JSON: {exc}") from None
        keys = doc.get("keys") if isinstance(doc, dict) and "keys" in doc else [doc]
        if not isinstance(keys, list) or not keys:
            raise EvidenceError("JWK set has no keys")
        return [jwk_to_spki(k) for k in keys]
    blocks = _PEM_KEY.findall(data)
    if blocks:
        out = []
        for block in blocks:
            try:
                out.append(serialization.load_pem_public_key(block).public_bytes(*_SPKI))
            except ValueError as exc:
                raise EvidenceError(f"PEM public key is not valid: {exc}") from None
        return out
    if b"-----BEGIN CERTIFICATE" in data:
        return [load_der(d).public_key().public_bytes(*_SPKI) for d in load_certs(data)]
    try:
        return [serialization.load_der_public_key(data).public_bytes(*_SPKI)]
    except ValueError:
        pass
    try:
        return [load_der(d).public_key().public_bytes(*_SPKI) for d in load_certs(data)]
    except EvidenceError:
        raise EvidenceError("not a public key: expected PEM (PUBLIC KEY or CERTIFICATE), a JWK, "
                            "or DER") from None
