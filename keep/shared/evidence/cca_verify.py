"""Arm CCA verifier: platform token signed by a platform key the user supplies, realm token
signed by the RAK it carries, the platform challenge binding that RAK, then the realm's values.

There is no Arm root to pin: a CCA platform's attestation key is endorsed by its silicon vendor
(or, for the published test tokens, by nobody).  The trust anchor is therefore a key the *user*
passes — ``reference.platform_keys`` (``keepbook verify --certs`` as PEM or JWK, or
``cca_platform_keys`` in the trust policy) — and the ``chain`` claim says so every time.  Keys or
certificates that came with the evidence (``certs``) are never anchors: they only name the key
that signed, and count when their digest is a simulated root the caller accepts (``sim-cca``).
Checks follow Veraison's ``ccatoken`` verifier: both COSE_Sign1 signatures,
``platform.challenge == HASH(realm RAK)``, the realm challenge against the expected report data,
RIM / REMs / personalization value against reference values, the platform lifecycle.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from . import cca, cose
from .certs import SIMULATED_LABEL, cert_name, format_fingerprint, load_der
from .trust import (Claim, EvidenceError, ReferenceValues, SimulatedRoots, TrustVector,
                    compare_value, failed, relaxable, unverified, verified)

KIND = "cca"

#: SPKI SHA-256 of CCA platform keys that are *published* (test code, emulators): recognised
#: only to say so — anyone can sign a token with them.
PUBLISHED_TEST_KEYS = {
    bytes.fromhex("51b944cdfa544d4c3273aa6bf350625a7dd53bbb6a71723274f538b19a207760"):
        "the published test IAK of veraison/ccatoken",
    bytes.fromhex("0928f896cb02326566530a62a1e36329a12d0a4a308f4fc81e8ff5560bca6bca"):
        "the published TF-RMM/FVP CPAK (tf-m-tools cca_platform.pem)",
}


@dataclass(frozen=True)
class _Key:
    key: ec.EllipticCurvePublicKey
    digest: bytes            # SHA-256 of its DER SubjectPublicKeyInfo
    name: str                # the certificate's CN, or "public key"


def _keys(ders: Sequence[bytes]) -> list[_Key]:
    """DER SubjectPublicKeyInfo blobs or certificates → their EC keys (others are skipped)."""
    out = []
    for der in ders:
        name = "public key"
        try:
            key: Any = serialization.load_der_public_key(bytes(der))
        except ValueError:
            try:
                cert = load_der(bytes(der))
            except EvidenceError:
                continue
            key, name = cert.public_key(), cert_name(cert)
        if isinstance(key, ec.EllipticCurvePublicKey):
            spki = key.public_bytes(serialization.Encoding.DER,
                                    serialization.PublicFormat.SubjectPublicKeyInfo)
            out.append(_Key(key, hashlib.sha256(spki).digest(), name))
    return out


def _root_detail(k: _Key, trusted: bool) -> dict[str, Any]:
    """What the chain claim says about the key that signed (as certs.ChainResult.detail)."""
    return {"root": format_fingerprint(k.digest), "root_name": k.name, "root_trusted": trusted}


def _platform_claims(token: cca.CcaToken, user: list[_Key], came: list[_Key],
                     simulated_roots: SimulatedRoots) -> tuple[str, list[Claim]]:
    """(protection, [chain, signature]) for the platform token's signature."""
    alg = token.platform.alg_name
    signer = next((k for k in user if token.platform.verify(k.key)), None)
    if signer is not None:
        published = PUBLISHED_TEST_KEYS.get(signer.digest)
        note = (f" — WARNING: this is {published}; anyone can sign with it, so it proves "
                "nothing about real hardware" if published else "")
        return "hardware", [
            verified("chain", "platform token signed by the platform key YOU SUPPLIED (SPKI "
                     f"sha256 {signer.digest.hex()[:16]}…): trust rests on that key being your "
                     f"device's genuine CCA platform attestation key — keepbook pins no Arm root{note}",
                     platform_key="user-supplied"),
            verified("signature", f"platform COSE_Sign1 ({alg}) verifies with the supplied platform key")]
    signer = next((k for k in came if token.platform.verify(k.key)), None)
    labels = simulated_roots if isinstance(simulated_roots, Mapping) else \
        {d: SIMULATED_LABEL for d in simulated_roots}
    if signer is not None and signer.digest in labels:
        whose = labels[signer.digest]
        return "simulated", [
            verified("chain", f"SIMULATED: platform token signed by '{signer.name}' ({whose}) — no "
                     "hardware protection; accepted only because your trust policy allows "
                     "simulation", **_root_detail(signer, True)),
            verified("signature", f"platform COSE_Sign1 ({alg}) verifies with the simulated platform key")]
    if signer is not None:
        why = (f"the platform token is signed by '{signer.name}' (sha256 {signer.digest.hex()[:16]}…), "
               "a key that came with the evidence, not one you supplied: a token cannot vouch for "
               "itself — pass your device's CCA platform key (--certs for keepbook verify, "
               "cca_platform_keys in your trust policy for %attest)")
        detail = _root_detail(signer, False)
    elif not user:
        why = ("no platform key was given: pass the CCA platform attestation key (PEM or JWK) "
               "with --certs (keepbook verify) or list it in cca_platform_keys of your trust "
               "policy (%attest)")
        detail = {}
    else:
        why = (f"the platform token's {alg} signature does not verify with any of the "
               f"{len(user)} platform key(s) given: another device's key, or the token was altered")
        detail = {}
    return "none", [failed("chain", why, platform_key="user-supplied", **detail),
                    failed("signature", "the platform token is not signed by a trusted platform "
                           "key (see chain)")]


class CcaVerifier:
    kind = KIND

    def verify(self, evidence: bytes, *, certs: Sequence[bytes] = (),
               collateral: Mapping[str, Any] | None = None,
               reference: ReferenceValues | None = None,
               simulated_roots: SimulatedRoots = (),
               at: _dt.datetime | None = None) -> TrustVector:
        """``reference.platform_keys``: the platform key(s) the user trusts, as DER
        SubjectPublicKeyInfo (see :mod:`.public_keys`) or DER certificates.  ``certs``: what came
        with the evidence — trusted only when its key's digest is in ``simulated_roots`` (this
        or an accepted installation's simulated platform key): the result is then SIMULATED."""
        token = cca.parse(evidence)                       # EvidenceError → unusable input
        ref = reference or ReferenceValues()
        tv = TrustVector(kind=KIND, protection="hardware")
        tv.fields.extend(cca.explain(token))

        # -- platform token: signed by a key the user supplied (or an accepted simulated one) ----
        tv.protection, claims = _platform_claims(token, _keys(ref.platform_keys or ()),
                                                 _keys(certs), simulated_roots)
        for claim in claims:
            tv.add(claim, required=True)

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
