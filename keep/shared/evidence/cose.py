"""COSE_Sign1 (RFC 9052) with ECDSA, verified by hand with ``cryptography``: the part of COSE
an Arm CCA token needs — ES256/ES384/ES512, no counter-signatures, no critical headers.

Verification builds ``Sig_structure = ["Signature1", protected, external_aad = h'', payload]``
and checks the raw r‖s signature over its CBOR encoding.  :func:`sign1` and :func:`encode_key`
are the inverse (the simulated CCA platform signs with them); the key is always the caller's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from . import strict_cbor
from .trust import EvidenceError

TAG_SIGN1 = 18
#: COSE algorithm id → (name, hash, curve)
ALGORITHMS = {-7: ("ES256", hashes.SHA256, ec.SECP256R1), -35: ("ES384", hashes.SHA384, ec.SECP384R1),
              -36: ("ES512", hashes.SHA512, ec.SECP521R1)}
_CRV = {1: ec.SECP256R1, 2: ec.SECP384R1, 3: ec.SECP521R1}


@dataclass(frozen=True)
class Sign1:
    protected: bytes                 # the serialized protected header (signed as is)
    alg: int
    payload: bytes
    signature: bytes

    @property
    def alg_name(self) -> str:
        return ALGORITHMS[self.alg][0]

    def to_be_signed(self) -> bytes:
        return cbor2.dumps(["Signature1", self.protected, b"", self.payload])

    def to_bytes(self, *, tagged: bool = True) -> bytes:
        """The COSE_Sign1 as CBOR (tag 18 unless ``tagged`` is false), empty unprotected header."""
        item = [self.protected, {}, self.payload, self.signature]
        return cbor2.dumps(cbor2.CBORTag(TAG_SIGN1, item) if tagged else item)

    def verify(self, key: ec.EllipticCurvePublicKey) -> bool:
        """Whether ``key`` made this signature (False for a key of another curve)."""
        _, hash_cls, curve_cls = ALGORITHMS[self.alg]
        if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, curve_cls):
            return False
        n = (key.curve.key_size + 7) // 8
        if len(self.signature) != 2 * n:
            return False
        r, s = int.from_bytes(self.signature[:n], "big"), int.from_bytes(self.signature[n:], "big")
        try:
            key.verify(encode_dss_signature(r, s), self.to_be_signed(), ec.ECDSA(hash_cls()))
            return True
        except (InvalidSignature, ValueError):
            return False


def parse_sign1(data: bytes | Any, what: str) -> Sign1:
    """A COSE_Sign1 (tagged 18 or not) from bytes or from an already decoded item."""
    item = strict_cbor.loads(data, tags=(TAG_SIGN1,), what=what) if isinstance(data, bytes) else data
    if isinstance(item, cbor2.CBORTag):
        if item.tag != TAG_SIGN1:
            raise EvidenceError(f"{what}: CBOR tag {item.tag} is not COSE_Sign1 (18)")
        item = item.value
    if not isinstance(item, (list, tuple)) or len(item) != 4:
        raise EvidenceError(f"{what} is not a COSE_Sign1 (an array of 4 items)")
    protected, unprotected, payload, signature = item
    if not all(isinstance(x, bytes) for x in (protected, payload, signature)) \
            or not isinstance(unprotected, Mapping):
        raise EvidenceError(f"{what}: COSE_Sign1 items have the wrong types")
    header = strict_cbor.loads(protected, what=f"{what} protected header") if protected else {}
    if not isinstance(header, Mapping):
        raise EvidenceError(f"{what}: the protected header is not a map")
    if 2 in header:
        raise EvidenceError(f"{what}: critical COSE headers {header[2]!r} are not understood")
    alg = header.get(1)
    if alg not in ALGORITHMS:
        raise EvidenceError(f"{what}: COSE algorithm {alg!r} is not supported (ES256, ES384, ES512)")
    return Sign1(protected, alg, payload, signature)


def ec_key(raw: bytes) -> ec.EllipticCurvePublicKey:
    """A COSE_Key (EC2) or an uncompressed SEC1 point → public key; EvidenceError if neither."""
    if raw[:1] == b"\x04":
        curve = {65: ec.SECP256R1, 97: ec.SECP384R1, 133: ec.SECP521R1}.get(len(raw))
        if curve is None:
            raise EvidenceError(f"EC point of {len(raw)} bytes is not P-256, P-384 or P-521")
        try:
            return ec.EllipticCurvePublicKey.from_encoded_point(curve(), raw)
        except ValueError:
            raise EvidenceError("EC point is not on its curve") from None
    key = strict_cbor.loads(raw, what="COSE_Key")
    if not isinstance(key, Mapping) or key.get(1) != 2 or key.get(-1) not in _CRV:
        raise EvidenceError("COSE_Key is not an EC2 key on P-256, P-384 or P-521")
    x, y = key.get(-2), key.get(-3)
    if not isinstance(x, bytes) or not isinstance(y, bytes):
        raise EvidenceError("COSE_Key has no x/y coordinates")
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(_CRV[key[-1]](), b"\x04" + x + y)
    except ValueError:
        raise EvidenceError("COSE_Key point is not on its curve") from None


def _alg_for(curve: ec.EllipticCurve) -> int:
    for alg, (_, _, curve_cls) in ALGORITHMS.items():
        if isinstance(curve, curve_cls):
            return alg
    raise ValueError(f"no COSE ECDSA algorithm for curve {curve.name}")


def sign1(key: ec.EllipticCurvePrivateKey, payload: bytes) -> Sign1:
    """A COSE_Sign1 over ``payload`` signed with the caller's ``key`` (ES256/384/512 by its curve)."""
    alg = _alg_for(key.curve)
    hash_cls = ALGORITHMS[alg][1]
    unsigned = Sign1(cbor2.dumps({1: alg}), alg, bytes(payload), b"")
    r, s = decode_dss_signature(key.sign(unsigned.to_be_signed(), ec.ECDSA(hash_cls())))
    n = (key.curve.key_size + 7) // 8
    return Sign1(unsigned.protected, alg, unsigned.payload, r.to_bytes(n, "big") + s.to_bytes(n, "big"))


def encode_key(pub: ec.EllipticCurvePublicKey) -> bytes:
    """An EC public key as a COSE_Key (EC2), the form :func:`ec_key` reads back."""
    crv = next((i for i, c in _CRV.items() if isinstance(pub.curve, c)), None)
    if crv is None:
        raise ValueError(f"no COSE curve id for {pub.curve.name}")
    n = (pub.curve.key_size + 7) // 8
    nums = pub.public_numbers()
    return cbor2.dumps({1: 2, -1: crv, -2: nums.x.to_bytes(n, "big"), -3: nums.y.to_bytes(n, "big")})
