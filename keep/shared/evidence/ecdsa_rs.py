"""ECDSA with raw big-endian r‖s signatures, as Intel's quotes and PCS collateral carry them."""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature


def p256_key(raw_xy: bytes) -> ec.EllipticCurvePublicKey:
    """An uncompressed P-256 point given as x‖y (64 bytes); ValueError if not on the curve."""
    return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + raw_xy)


def p256_ok(key, sig_rs: bytes, data: bytes) -> bool:
    """Whether ``sig_rs`` (r‖s, 32 bytes each) is an ECDSA-SHA256 signature of ``data``."""
    if not isinstance(key, ec.EllipticCurvePublicKey) or len(sig_rs) != 64:
        return False
    try:
        key.verify(encode_dss_signature(int.from_bytes(sig_rs[:32], "big"),
                                        int.from_bytes(sig_rs[32:], "big")), data,
                   ec.ECDSA(hashes.SHA256()))
        return True
    except (InvalidSignature, ValueError):
        return False
