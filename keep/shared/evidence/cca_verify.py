"""Arm CCA verifier: platform token signed by a platform key the user supplies, realm token
signed by the RAK it carries, the platform challenge binding that RAK, then the realm's values.

There is no Arm root to pin: a CCA platform's attestation key is endorsed by its silicon vendor
(or, for the published test tokens, by nobody).  The trust anchor is therefore whatever key the
user passes (``--certs`` as PEM or JWK, or the trust policy), and the ``chain`` claim says so
every time.  Checks follow Veraison's ``ccatoken`` verifier: both COSE_Sign1 signatures,
``platform.challenge == HASH(realm RAK)``, the realm challenge against the expected report data,
RIM / REMs / personalization value against reference values, the platform lifecycle.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
from typing import Any, Mapping, Sequence

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from . import cca, cose
from .certs import load_der
from .trust import (EvidenceError, ReferenceValues, SimulatedRoots, TrustVector, compare_value,
                    failed, relaxable, unverified, verified)

KIND = "cca"

#: SPKI SHA-256 of CCA platform keys that are *published* (test code, emulators): recognised
#: only to say so — anyone can sign a token with them.
PUBLISHED_TEST_KEYS = {
    bytes.fromhex("51b944cdfa544d4c3273aa6bf350625a7dd53bbb6a71723274f538b19a207760"):
        "the published test IAK of veraison/ccatoken",
    bytes.fromhex("0928f896cb02326566530a62a1e36329a12d0a4a308f4fc81e8ff5560bca6bca"):
        "the published TF-RMM/FVP CPAK (tf-m-tools cca_platform.pem)",
}


def _public_key(der: bytes) -> ec.EllipticCurvePublicKey | None:
    """A DER SubjectPublicKeyInfo or certificate → its EC key (None for anything else)."""
    try:
        key = serialization.load_der_public_key(der)
    except ValueError:
        try:
            key = load_der(der).public_key()
        except EvidenceError:
            return None
    return key if isinstance(key, ec.EllipticCurvePublicKey) else None


def _spki_digest(key: ec.EllipticCurvePublicKey) -> bytes:
    return hashlib.sha256(key.public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)).digest()


class CcaVerifier:
    kind = KIND

    def verify(self, evidence: bytes, *, certs: Sequence[bytes] = (),
               collateral: Mapping[str, Any] | None = None,
               reference: ReferenceValues | None = None,
               simulated_roots: SimulatedRoots = (),
               at: _dt.datetime | None = None) -> TrustVector:
        """``certs``: the platform key(s) the user trusts — never keys that came with the
        evidence — as DER SubjectPublicKeyInfo (see :mod:`.public_keys`) or DER certificates.
        A key whose SPKI digest is in ``simulated_roots`` is this installation's simulated
        platform key (trust policy allows simulation): the result is labelled SIMULATED."""
        token = cca.parse(evidence)                       # EvidenceError → unusable input
        ref = reference or ReferenceValues()
        tv = TrustVector(kind=KIND, protection="hardware")
        tv.fields.extend(cca.explain(token))

        # -- platform token: signed by a key the user supplied --------------------------------
        keys = [k for k in (_public_key(bytes(d)) for d in certs) if k is not None]
        sim = set(simulated_roots)
        user_keys = [k for k in keys if _spki_digest(k) not in sim]
        sim_keys = [k for k in keys if _spki_digest(k) in sim]
        signer = next((k for k in user_keys if token.platform.verify(k)), None)
        sim_signer = next((k for k in sim_keys if token.platform.verify(k)), None) if signer is None else None
        if signer is not None:
            digest = _spki_digest(signer)
            published = PUBLISHED_TEST_KEYS.get(digest)
            note = (f" — WARNING: this is {published}; anyone can sign with it, so it proves "
                    "nothing about real hardware" if published else "")
            tv.add(verified("chain", "platform token signed by the platform key YOU SUPPLIED "
                            f"(SPKI sha256 {digest.hex()[:16]}…): trust rests on that key being "
                            "your device's genuine CCA platform attestation key — keepbook pins "
                            f"no Arm root{note}", platform_key="user-supplied"), required=True)
            tv.add(verified("signature", f"platform COSE_Sign1 ({token.platform.alg_name}) verifies "
                            "with the supplied platform key"), required=True)
        elif sim_signer is not None:
            tv.protection = "simulated"
            tv.add(verified("chain", "SIMULATED: platform token signed by this installation's "
                            "simulated CCA platform key — no hardware protection; accepted only "
                            "because your trust policy allows simulation"), required=True)
            tv.add(verified("signature", f"platform COSE_Sign1 ({token.platform.alg_name}) verifies "
                            "with the simulated platform key"), required=True)
        else:
            tv.protection = "none"
            why = ("no platform key was given: pass the CCA platform attestation key (PEM or JWK) "
                   "with --certs (keepbook verify) or list it in cca_platform_keys of your trust "
                   "policy (%attest)" if not keys else
                   f"the platform token's {token.platform.alg_name} signature does not verify with "
                   f"any of the {len(keys)} platform key(s) given: another device's key, or the "
                   "token was altered")
            tv.add(failed("chain", why, platform_key="user-supplied"), required=True)
            tv.add(failed("signature", "the platform token is not signed by a trusted platform "
                          "key (see chain)"), required=True)

        # -- realm token: signed by its own RAK, which the platform vouches for --------------------
        try:
            rak = cose.ec_key(token.rak)
        except EvidenceError as exc:
            rak = None
            tv.add(failed("realm_signature", f"the realm's RAK cannot be read: {exc}"), required=True)
        if rak is not None:
            if token.realm.verify(rak):
                tv.add(verified("realm_signature", f"realm COSE_Sign1 ({token.realm.alg_name}) "
                                "verifies with the RAK in the realm token"), required=True)
            else:
                tv.add(failed("realm_signature", "the realm token's signature does not verify with "
                              "its RAK: the realm claims were altered"), required=True)
        want = token.expected_platform_challenge()
        if token.platform_challenge == want:
            tv.add(verified("rak_binding", f"platform challenge = {token.rak_hash_alg}(RAK): the "
                            "platform vouches for this realm's attestation key"), required=True)
        else:
            tv.add(failed("rak_binding", f"the platform challenge is not the {token.rak_hash_alg} of "
                          "the realm's RAK: the realm token was swapped or forged"), required=True)

        # -- platform state and realm values ---------------------------------------------------
        secured = token.lifecycle >> 8 == cca.SECURED
        tv.add(relaxable(
            "lifecycle", secured, f"platform lifecycle {token.lifecycle:#06x}: secured",
            f"platform lifecycle {token.lifecycle:#06x} ({token.lifecycle_name}) is not 'secured': "
            "debug or provisioning states do not protect the realm's secrets",
            "use a platform in the secured lifecycle state", ref.allow_debug, "allow_debug"),
            required=True)
        tv.add(compare_value("measurement", token.rim, ref.measurement, "realm initial measurement (RIM)",
                             "the realm image is not the one you expect"),
               required=ref.measurement is not None)
        tv.add(_rems_claim(token, ref), required=any(r is not None for r in (ref.rems or [])))
        tv.add(compare_value("personalization", token.personalization, ref.personalization,
                             "realm personalization value", "the realm was created with another RPV"),
               required=ref.personalization is not None)
        tv.add(compare_value("report_data", token.challenge, ref.report_data, "realm challenge",
                             "the token answers a different request (replayed, or for another key)"),
               required=ref.report_data is not None)
        return tv


def _rems_claim(token: cca.CcaToken, ref: ReferenceValues):
    want = list(ref.rems or [])
    if not any(w is not None for w in want):
        return unverified("rems", "REM0–3 reported; no expected values given")
    bad = [f"REM{i}" for i, w in enumerate(want[:4]) if w is not None and token.rems[i] != bytes(w)]
    if bad:
        return failed("rems", f"{', '.join(bad)} differ from the expected values: what the realm "
                      "measured at run time is not what you expect")
    return verified("rems", "the given REMs match")
