"""HPKE sealing (RFC 9180) through ``cryptography``'s high-level ``hpke`` API, one place for both
sides: the client seals, the Keep opens.  Suites are named on the wire so the Keep's choice is
visible and part of what the client checks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519

_MLKEM768_PUB = 1184


@dataclass(frozen=True)
class SuiteSpec:
    name: str
    kem: Any
    kdf: Any
    aead: Any

    def suite(self) -> hpke.Suite:
        return hpke.Suite(self.kem, self.kdf, self.aead)


X25519_SUITE = SuiteSpec("x25519-hkdfsha256-aes128gcm", hpke.KEM.X25519, hpke.KDF.HKDF_SHA256,
                         hpke.AEAD.AES_128_GCM)
PQ_SUITE = SuiteSpec("mlkem768x25519-hkdfsha256-aes128gcm", hpke.KEM.MLKEM768_X25519,
                     hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_128_GCM)
SUITES = {s.name: s for s in (X25519_SUITE, PQ_SUITE)}
DEFAULT_SUITE = X25519_SUITE.name


class SealingError(ValueError):
    pass


def _spec(name: str) -> SuiteSpec:
    try:
        return SUITES[name]
    except KeyError:
        raise SealingError(f"unknown HPKE suite {name!r}; known: {', '.join(SUITES)}") from None


def generate(suite: str = DEFAULT_SUITE) -> tuple[Any, bytes]:
    """A fresh key pair for ``suite``: (private key object, public key bytes for the wire)."""
    spec = _spec(suite)
    if spec is X25519_SUITE:
        priv = x25519.X25519PrivateKey.generate()
        pub = priv.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return priv, pub
    mk, xk = mlkem.MLKEM768PrivateKey.generate(), x25519.X25519PrivateKey.generate()
    # Wire form of the hybrid public key: ML-KEM-768 encapsulation key ‖ X25519 key (1184+32).
    pub = mk.public_key().public_bytes_raw() + xk.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hpke.MLKEM768X25519PrivateKey(mk, xk), pub


def _public_key(suite: str, data: bytes) -> Any:
    spec = _spec(suite)
    try:
        if spec is X25519_SUITE:
            return x25519.X25519PublicKey.from_public_bytes(data)
        if len(data) != _MLKEM768_PUB + 32:
            raise ValueError(f"expected {_MLKEM768_PUB + 32} bytes, got {len(data)}")
        return hpke.MLKEM768X25519PublicKey(
            mlkem.MLKEM768PublicKey.from_public_bytes(data[:_MLKEM768_PUB]),
            x25519.X25519PublicKey.from_public_bytes(data[_MLKEM768_PUB:]))
    except Exception as exc:
        raise SealingError(f"not a valid {suite} public key: {exc}") from None


def check_public_key(suite: str, data: bytes) -> None:
    """SealingError (naming the suite keepbook knows, or what is wrong with the key) unless
    ``data`` is a public key of ``suite``: the client checks this when it verifies an attestation,
    before it would seal anything to it."""
    _public_key(suite, data)


def seal(suite: str, public_key: bytes, plaintext: bytes, info: bytes) -> bytes:
    return _spec(suite).suite().encrypt(plaintext, _public_key(suite, public_key), info=info)


def open_sealed(suite: str, private_key: Any, ciphertext: bytes, info: bytes) -> bytes:
    try:
        return _spec(suite).suite().decrypt(ciphertext, private_key, info=info)
    except SealingError:
        raise
    except Exception:
        raise SealingError("sealed message does not open with this Keep's key: it was sealed "
                           "to another Keep or attestation, or altered in transit") from None
