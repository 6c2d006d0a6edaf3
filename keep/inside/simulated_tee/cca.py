"""Simulated Arm CCA tokens (``sim-cca``): what the RMM and the platform's attestation service
would hand a realm, made byte-exact and signed by this installation's simulated platform key.

* the **platform key** (CPAK, P-384) is made once per installation like the other simulated
  roots, with a self-signed certificate (``platform.der``: real CCA platform keys have none, but
  a certificate lets this simulated root travel and be fingerprinted like the others — keep
  manager ``contracts``, ``known_sim_roots``); a client trusts it only when its trust policy
  allows simulation (:mod:`keepbook.keep.shared.evidence.simulated_roots`);
* a fresh **RAK** (P-384) per token signs the realm token; the platform token's challenge is the
  hash of that RAK, so the platform vouches for exactly this realm key;
* the realm challenge is the 64-byte report data, the RIM the Keep's measurement (64 bytes,
  SHA-512, as the RMM measures), REM0–3 and the personalization value zero unless overridden.

Parsed and verified by the same :mod:`keepbook.keep.shared.evidence.cca_verify` code as real
tokens; only the platform key differs, and the result says SIMULATED.
"""

from __future__ import annotations

import hashlib
from typing import Any

import cbor2
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from keepbook.keep.shared.evidence import cca, cose

from .vendor import _key_pem, _name, make_cert, register_generator, state

PLATFORM_PROFILE = "tag:arm.com,2023:cca_platform#1.0.0"
REALM_PROFILE = "tag:arm.com,2023:realm#1.0.0"
SIM_IMPLEMENTATION_ID = hashlib.sha256(b"keepbook SIMULATED CCA platform implementation").digest()
SIM_VERIFIER = "keepbook SIMULATED CCA platform: no verification service"
SECURED, DEBUG = 0x3000, 0x4000          # PSA lifecycle: secured / non-PSA-RoT debug
#: the simulated platform's measured firmware (type, version, what is "measured")
SIM_SW = (("BL", "2.10.0", b"SIMULATED trusted firmware BL2"),
          ("RMM", "0.5.0", b"SIMULATED realm management monitor"))


def _gen() -> dict[str, bytes]:
    key = ec.generate_private_key(ec.SECP384R1())
    name = _name("SIMULATED Arm CCA platform key", "keepbook SIMULATED Arm CCA")
    return {"platform.key": _key_pem(key),
            "platform.der": make_cert(name, key.public_key(), name, key, ca=True)}


register_generator("cca", _gen)


def _platform_claims(challenge: bytes, platform_pub: ec.EllipticCurvePublicKey, lifecycle: int,
                     sw: Any) -> dict[int, Any]:
    spki = platform_pub.public_bytes(serialization.Encoding.DER,
                                     serialization.PublicFormat.SubjectPublicKeyInfo)
    signer = hashlib.sha256(spki).digest()
    components = sw if sw is not None else [
        {1: kind, 2: hashlib.sha256(what).digest(), 4: version, 5: signer, 6: "sha-256"}
        for kind, version, what in SIM_SW]
    return {cca.P_PROFILE: PLATFORM_PROFILE, cca.P_CHALLENGE: challenge,
            cca.P_IMPL_ID: SIM_IMPLEMENTATION_ID,
            cca.P_INSTANCE_ID: b"\x01" + hashlib.sha256(spki).digest(),   # UEID, type RAND
            cca.P_CONFIG: b"\x00", cca.P_LIFECYCLE: lifecycle, cca.P_SW: components,
            cca.P_VERIFIER: SIM_VERIFIER, cca.P_HASH_ALG: "sha-256"}


def make_token(report_data: bytes, measurement: bytes, *, debug: bool = False,
               **overrides: Any) -> tuple[bytes, list[bytes]]:
    """A CCA token for ``report_data`` (64 bytes) and the realm initial measurement, and the
    certificate of the simulated platform key that comes with it (never an anchor by itself: a
    verifier trusts it only by its digest, when simulation is allowed).

    ``overrides``: ``personalization`` (64 bytes), ``rems`` (4 measurements), ``rak_hash_alg``,
    ``lifecycle``, ``sw_components``, ``wrapped`` (False: plain byte strings), ``rak`` and
    ``platform_key`` (EC private keys to sign with instead of a fresh RAK / the simulated key)."""
    known = {"personalization", "rems", "rak_hash_alg", "lifecycle", "sw_components", "wrapped",
             "rak", "platform_key"}
    unknown = set(overrides) - known
    if unknown:
        raise TypeError(f"unknown CCA token field(s): {', '.join(sorted(unknown))}")
    own = overrides.get("platform_key") is None
    platform_key = state("cca")["platform_key"] if own else overrides["platform_key"]
    rak = overrides.get("rak") or ec.generate_private_key(ec.SECP384R1())
    rak_hash = overrides.get("rak_hash_alg", "sha-256")
    rak_claim = cose.encode_key(rak.public_key())
    realm = {cca.R_PROFILE: REALM_PROFILE, cca.R_CHALLENGE: bytes(report_data),
             cca.R_RPV: bytes(overrides.get("personalization", bytes(64))),
             cca.R_RIM: bytes(measurement),
             cca.R_REM: [bytes(r) for r in overrides.get("rems", [bytes(64)] * 4)],
             cca.R_HASH_ALG: "sha-512", cca.R_RAK: rak_claim, cca.R_RAK_HASH_ALG: rak_hash}
    lifecycle = overrides.get("lifecycle", DEBUG if debug else SECURED)
    platform = _platform_claims(cca.HASHES[rak_hash](rak_claim).digest(),
                                platform_key.public_key(), lifecycle, overrides.get("sw_components"))
    token = cca.build(cose.sign1(platform_key, cbor2.dumps(platform)),
                      cose.sign1(rak, cbor2.dumps(realm)),
                      wrapped=overrides.get("wrapped", True))
    return token, ([state("cca")["files"]["platform.der"]] if own else [])
