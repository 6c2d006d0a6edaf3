"""Arm CCA attestation token: the one parser, builder and explainer.

Layout from Arm's "Realm Management Monitor specification" (A7.2) and the IETF draft
"Arm's Confidential Compute Architecture Reference Attestation Token" (draft-ffm-rats-cca-token):

* a CBOR tag 907 (CCA token collection) around a map with the platform token (key 44234) and the
  realm token (key 44241); each is a COSE_Sign1 — as a byte string, or as the
  ``[content-format, bstr]`` pair TF-RMM emits;
* the platform token is signed by the platform's CCA attestation key (CPAK/IAK), which only the
  platform's owner can vouch for; its ``challenge`` (claim 10) is the hash of the realm's RAK;
* the realm token is signed by the RAK, whose public key (claim 44237, a COSE_Key or a SEC1
  point) sits in the realm token itself; its ``challenge`` carries the 64 bytes the realm asked
  to bind (keepbook's report data).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Mapping

import cbor2

from . import cose, strict_cbor
from .trust import EvidenceError

TAG_COLLECTION = 907
PLATFORM, REALM = 44234, 44241
MAGIC = b"\xd9\x03\x8b"                       # CBOR tag 907

# platform claims
P_PROFILE, P_CHALLENGE, P_IMPL_ID, P_INSTANCE_ID = 265, 10, 2396, 256
P_CONFIG, P_LIFECYCLE, P_SW, P_VERIFIER, P_HASH_ALG = 2401, 2395, 2399, 2400, 2402
# realm claims
R_PROFILE, R_CHALLENGE, R_RPV, R_HASH_ALG, R_RAK, R_RIM, R_REM, R_RAK_HASH_ALG = \
    265, 10, 44235, 44236, 44237, 44238, 44239, 44240

HASHES = {"sha-256": hashlib.sha256, "sha-384": hashlib.sha384, "sha-512": hashlib.sha512}

#: PSA security lifecycle (claim 2395): upper byte = state, lower byte = implementation detail
LIFECYCLE = {0x00: "unknown", 0x10: "assembly and test", 0x20: "PSA RoT provisioning",
             0x30: "secured", 0x40: "non-PSA RoT debug", 0x50: "recoverable PSA RoT debug",
             0x60: "decommissioned"}
SECURED = 0x30


@dataclass(frozen=True)
class SwComponent:
    kind: str | None
    measurement: bytes
    version: str | None
    signer_id: bytes | None
    hash_alg: str | None


@dataclass(frozen=True)
class CcaToken:
    platform: cose.Sign1
    realm: cose.Sign1
    platform_claims: Mapping[int, Any] = field(repr=False)
    realm_claims: Mapping[int, Any] = field(repr=False)
    wrapped: bool                       # [content-format, bstr] form

    # -- realm
    @property
    def challenge(self) -> bytes:
        return self.realm_claims[R_CHALLENGE]

    @property
    def rak(self) -> bytes:
        return self.realm_claims[R_RAK]

    @property
    def rak_hash_alg(self) -> str:
        return self.realm_claims[R_RAK_HASH_ALG]

    @property
    def rim(self) -> bytes:
        return self.realm_claims[R_RIM]

    @property
    def rems(self) -> list[bytes]:
        return list(self.realm_claims[R_REM])

    @property
    def personalization(self) -> bytes:
        return self.realm_claims[R_RPV]

    @property
    def measurement_hash_alg(self) -> str:
        return self.realm_claims[R_HASH_ALG]

    # -- platform
    @property
    def platform_challenge(self) -> bytes:
        return self.platform_claims[P_CHALLENGE]

    @property
    def lifecycle(self) -> int:
        return self.platform_claims[P_LIFECYCLE]

    @property
    def lifecycle_name(self) -> str:
        return LIFECYCLE.get(self.lifecycle >> 8, f"invalid ({self.lifecycle:#06x})")

    @property
    def sw_components(self) -> list[SwComponent]:
        return [SwComponent(c.get(1), c[2], c.get(4), c.get(5), c.get(6))
                for c in self.platform_claims.get(P_SW, [])]

    def expected_platform_challenge(self) -> bytes:
        """HASH(RAK claim bytes) with the realm's RAK hash algorithm: what binds the two tokens."""
        return HASHES[self.rak_hash_alg](self.rak).digest()


#: content format of each token in the ``[content-format, bstr]`` form (as TF-RMM and Veraison emit)
CONTENT_FORMAT = 263


def build(platform: cose.Sign1, realm: cose.Sign1, *, wrapped: bool = True) -> bytes:
    """The tag 907 collection around a signed platform and realm token (the inverse of
    :func:`parse`); ``wrapped``: each as ``[content-format, bstr]``, else as a byte string."""
    def item(s: cose.Sign1) -> Any:
        raw = s.to_bytes()
        return [CONTENT_FORMAT, raw] if wrapped else raw
    return cbor2.dumps(cbor2.CBORTag(TAG_COLLECTION, {PLATFORM: item(platform), REALM: item(realm)}))


def looks_like(data: bytes) -> bool:
    return data[:3] == MAGIC


def _unwrap(item: Any, what: str) -> tuple[cose.Sign1, bool]:
    if isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[0], int) \
            and not isinstance(item[0], bool) and isinstance(item[1], bytes):
        return cose.parse_sign1(item[1], what), True
    if isinstance(item, bytes):
        return cose.parse_sign1(item, what), False
    raise EvidenceError(f"the {what} is neither a COSE_Sign1 byte string nor [content-format, bstr]")


def _want(claims: Mapping[int, Any], key: int, types: tuple[type, ...], what: str,
          sizes: tuple[int, ...] | None = None) -> None:
    if key not in claims:
        raise EvidenceError(f"{what} has no claim {key}")
    v = claims[key]
    if isinstance(v, bool) or not isinstance(v, types):
        raise EvidenceError(f"{what} claim {key} has the wrong type ({type(v).__name__})")
    if sizes is not None and len(v) not in sizes:
        raise EvidenceError(f"{what} claim {key} is {len(v)} bytes, expected "
                            f"{' or '.join(map(str, sizes))}")


def _claims(sign1: cose.Sign1, what: str) -> Mapping[int, Any]:
    claims = strict_cbor.loads(sign1.payload, what=f"{what} claims")
    if not isinstance(claims, Mapping):
        raise EvidenceError(f"the {what} claims are not a map")
    return claims


def parse(data: bytes) -> CcaToken:
    """Parse a CCA token; :class:`EvidenceError` names what is wrong.  Signatures are not checked here."""
    top = strict_cbor.loads(data, tags=(TAG_COLLECTION, cose.TAG_SIGN1), what="CCA token")
    if not isinstance(top, cbor2.CBORTag) or top.tag != TAG_COLLECTION:
        raise EvidenceError("not a CCA token: expected CBOR tag 907 (CCA token collection)")
    coll = top.value
    if not isinstance(coll, Mapping) or set(coll) != {PLATFORM, REALM}:
        raise EvidenceError("the CCA token collection must hold exactly a platform token (44234) "
                            "and a realm token (44241)")
    platform, w1 = _unwrap(coll[PLATFORM], "platform token")
    realm, w2 = _unwrap(coll[REALM], "realm token")
    pc, rc = _claims(platform, "platform token"), _claims(realm, "realm token")
    _want(pc, P_CHALLENGE, (bytes,), "platform token", (32, 48, 64))
    _want(pc, P_LIFECYCLE, (int,), "platform token")
    _want(pc, P_IMPL_ID, (bytes,), "platform token", (32,))
    _want(pc, P_INSTANCE_ID, (bytes,), "platform token")
    if not isinstance(pc.get(P_SW, []), (list, tuple)) or not all(
            isinstance(c, Mapping) and isinstance(c.get(2), bytes) for c in pc.get(P_SW, [])):
        raise EvidenceError("platform token software components (2399) must be maps with a "
                            "measurement value (2)")
    _want(rc, R_CHALLENGE, (bytes,), "realm token", (64,))
    _want(rc, R_RPV, (bytes,), "realm token", (64,))
    _want(rc, R_RIM, (bytes,), "realm token", (32, 48, 64))
    _want(rc, R_RAK, (bytes,), "realm token")
    _want(rc, R_HASH_ALG, (str,), "realm token")
    _want(rc, R_RAK_HASH_ALG, (str,), "realm token")
    rems = rc.get(R_REM)
    if not isinstance(rems, (list, tuple)) or len(rems) != 4 or not all(
            isinstance(r, bytes) and len(r) in (32, 48, 64) for r in rems):
        raise EvidenceError("realm token REMs (44239) must be 4 measurements of 32, 48 or 64 bytes")
    if rc[R_RAK_HASH_ALG] not in HASHES:
        raise EvidenceError(f"realm RAK hash algorithm {rc[R_RAK_HASH_ALG]!r} is not "
                            f"{', '.join(HASHES)}")
    return CcaToken(platform, realm, pc, rc, w1 and w2)


def _hex(v: Any) -> str:
    return v.hex() if isinstance(v, bytes) else str(v)


def explain(t: CcaToken) -> list[tuple[str, str, str]]:
    """(field, value, one-line explanation) for %attest --explain."""
    pc = t.platform_claims
    rows = [
        ("platform.profile", str(pc.get(P_PROFILE, "—")), "EAT profile of the platform token"),
        ("platform.signature", t.platform.alg_name, "COSE_Sign1 by the platform attestation key (CPAK/IAK)"),
        ("platform.challenge", t.platform_challenge.hex(), f"{t.rak_hash_alg} of the realm's RAK: binds the realm token to this platform token"),
        ("platform.implementation_id", _hex(pc.get(P_IMPL_ID)), "identifies the platform's implementation (the verifier looks up its reference values)"),
        ("platform.instance_id", _hex(pc.get(P_INSTANCE_ID)), "UEID of this device's attestation key"),
        ("platform.config", _hex(pc.get(P_CONFIG, b"")), "platform configuration (e.g. which features are enabled)"),
        ("platform.lifecycle", f"{t.lifecycle:#06x} ({t.lifecycle_name})", "security lifecycle: only 'secured' (0x30xx) protects secrets"),
        ("platform.hash_algorithm", str(pc.get(P_HASH_ALG, "—")), "hash used for the software component measurements"),
        ("platform.verification_service", str(pc.get(P_VERIFIER, "—")), "where the platform's vendor says tokens can be appraised"),
    ]
    for i, c in enumerate(t.sw_components):
        rows.append((f"platform.sw[{i}]", f"{c.kind or '?'} {c.version or ''} {c.measurement.hex()[:32]}…".replace("  ", " "),
                     "measured platform firmware component (type, version, measurement; signer "
                     + (c.signer_id.hex()[:16] + "…)" if c.signer_id else "unknown)")))
    rows += [
        ("realm.profile", str(t.realm_claims.get(R_PROFILE, "—")), "EAT profile of the realm token"),
        ("realm.signature", t.realm.alg_name, "COSE_Sign1 by the realm attestation key (RAK)"),
        ("realm.challenge", t.challenge.hex(), "64 bytes the realm asked to bind: keepbook's report data"),
        ("realm.personalization", t.personalization.hex(), "Realm Personalization Value, chosen by the realm's creator"),
        ("realm.hash_algorithm", t.measurement_hash_alg, "hash used for the realm measurements"),
        ("realm.rim", t.rim.hex(), "Realm Initial Measurement: the realm's contents at activation"),
    ]
    rows += [(f"realm.rem{i}", r.hex(), "Realm Extensible Measurement, extended by the realm at run time")
             for i, r in enumerate(t.rems)]
    rows += [("realm.rak", t.rak.hex()[:64] + "…", "Realm Attestation Key (public): signs the realm token"),
             ("realm.rak_hash_algorithm", t.rak_hash_alg, "hash of the RAK that the platform challenge carries")]
    return rows
