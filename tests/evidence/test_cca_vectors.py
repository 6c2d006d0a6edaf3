"""Arm CCA tokens: the real test tokens verify with their (published) platform keys, the trust
vector says the key is user-supplied, and every mutation fails the right claim."""

from __future__ import annotations

import json

import cbor2
import pytest
from cryptography.hazmat.primitives import serialization

from keepbook.keep.shared.evidence import cca, detect_kind
from keepbook.keep.shared.evidence.cca_verify import CcaVerifier
from keepbook.keep.shared.evidence.public_keys import load_public_keys
from keepbook.keep.shared.evidence.trust import EvidenceError, ReferenceValues, Status
from keepbook.kernel.verify_cli import main

C = "cca/ccatoken__test_common.go__"
GOOD, LEGACY = C + "testGoodCCAToken.cbor", C + "testRMMLegacyEvidence.cbor"
IAK, CPAK, RAK = C + "testIAK.public.jwk.json", C + "testRMMCPAK.public.jwk.json", C + "testRAK.public.jwk.json"
TOKENS = {GOOD: IAK, LEGACY: CPAK}


def st(tv, name):
    c = tv.get(name)
    assert c is not None, f"claim {name} missing"
    return c.status


def keys(vec, name):
    return load_public_keys(vec(name))


def _with_key(ref: ReferenceValues, platform_keys: list[bytes]) -> ReferenceValues:
    ref.platform_keys = platform_keys
    return ref


def patch(data: bytes, old: bytes, new: bytes) -> bytes:
    assert data.count(old) == 1 and len(old) == len(new), old
    return data.replace(old, new)


@pytest.mark.vectors
@pytest.mark.parametrize("token", sorted(TOKENS))
def test_cca_token_verifies_with_its_platform_key(vec, token):
    ev = vec(token)
    assert detect_kind(ev) == "cca"
    t = cca.parse(ev)
    assert t.wrapped and len(t.rems) == 4
    tv = CcaVerifier().verify(ev, reference=ReferenceValues(platform_keys=keys(vec, TOKENS[token])))
    assert tv.ok, tv.to_text()
    for name in ("chain", "signature", "realm_signature", "rak_binding", "lifecycle"):
        assert st(tv, name) is Status.VERIFIED
    chain = tv.get("chain")
    assert "YOU SUPPLIED" in chain.reason and chain.detail["platform_key"] == "user-supplied"
    assert "published" in chain.reason          # the test keys are known to be public
    names = {n for n, _, _ in tv.fields}
    assert {"platform.lifecycle", "platform.sw[0]", "realm.rim", "realm.rem3",
            "realm.personalization"} <= names


@pytest.mark.vectors
def test_platform_key_as_pem(vec):
    der = keys(vec, IAK)[0]
    pem = serialization.load_der_public_key(der).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert load_public_keys(pem) == [der]
    assert CcaVerifier().verify(vec(GOOD), reference=ReferenceValues(platform_keys=load_public_keys(pem))).ok


@pytest.mark.vectors
def test_wrong_or_missing_platform_key(vec):
    tv = CcaVerifier().verify(vec(GOOD), reference=ReferenceValues(platform_keys=keys(vec, CPAK)))
    assert st(tv, "chain") is Status.FAILED and "does not verify with any" in tv.get("chain").reason
    assert st(tv, "signature") is Status.FAILED and not tv.ok and tv.protection == "none"
    tv = CcaVerifier().verify(vec(GOOD))
    assert "no platform key was given" in tv.get("chain").reason and "--certs" in tv.get("chain").reason
    # the RAK is not a platform key: a token cannot vouch for itself
    tv = CcaVerifier().verify(vec(GOOD), reference=ReferenceValues(platform_keys=keys(vec, RAK)))
    assert st(tv, "chain") is Status.FAILED


@pytest.mark.vectors
def test_a_key_that_comes_with_the_evidence_is_never_the_anchor(vec):
    """The right key, but sent along with the token (certs), not supplied by the user: refused,
    naming the key that signed so the user can compare it."""
    tv = CcaVerifier().verify(vec(GOOD), certs=keys(vec, IAK))
    chain = tv.get("chain")
    assert chain.status is Status.FAILED and "came with the evidence" in chain.reason and not tv.ok
    assert chain.detail["root_trusted"] is False and chain.detail["root"].startswith("sha256:51b944cd")
    # ... unless its digest is a simulated root the caller accepts: then SIMULATED, never hardware
    digest = bytes.fromhex(chain.detail["root"].removeprefix("sha256:"))
    tv = CcaVerifier().verify(vec(GOOD), certs=keys(vec, IAK), simulated_roots={digest: "a test root"})
    assert tv.ok and tv.protection == "simulated" and "a test root" in tv.get("chain").reason


# -- mutations (lengths unchanged, so the CBOR still parses) ---------------------------------------

@pytest.mark.vectors
def test_platform_claim_mutation_fails_signature(vec):
    ev = patch(vec(GOOD), b"\x19\x09\x61\x43\x01\x02\x03", b"\x19\x09\x61\x43\x01\x02\x04")  # config
    tv = CcaVerifier().verify(ev, reference=ReferenceValues(platform_keys=keys(vec, IAK)))
    assert st(tv, "signature") is Status.FAILED and st(tv, "chain") is Status.FAILED
    assert st(tv, "realm_signature") is Status.VERIFIED


@pytest.mark.vectors
def test_lifecycle_mutation(vec):
    """Secured (0x3000) → non-PSA-RoT debug (0x4000): the lifecycle claim and the signature fail."""
    ev = patch(vec(GOOD), b"\x19\x09\x5b\x19\x30\x00", b"\x19\x09\x5b\x19\x40\x00")
    tv = CcaVerifier().verify(ev, reference=ReferenceValues(platform_keys=keys(vec, IAK)))
    assert st(tv, "lifecycle") is Status.FAILED and "debug" in tv.get("lifecycle").reason
    assert st(tv, "signature") is Status.FAILED
    lc = cca.parse(ev).lifecycle
    assert lc == 0x4000


@pytest.mark.vectors
@pytest.mark.parametrize("what,old", [("rim", b"C" * 8), ("challenge", b"AB" * 4), ("rpv", b"AD" * 4)])
def test_realm_claim_mutation_fails_realm_signature(vec, what, old):
    data = vec(GOOD)
    i = data.find(old)
    assert i > 0
    ev = data[:i] + bytes([data[i] ^ 1]) + data[i + 1:]
    tv = CcaVerifier().verify(ev, reference=ReferenceValues(platform_keys=keys(vec, IAK)))
    assert st(tv, "realm_signature") is Status.FAILED, what
    assert st(tv, "signature") is Status.VERIFIED and not tv.ok


@pytest.mark.vectors
def test_rak_binding_fails_for_a_swapped_realm_token(vec):
    """The legacy token's realm token under the good token's platform token: both signatures
    hold, but the platform challenge is not the hash of that realm's RAK."""
    good = cbor2.loads(vec(GOOD)).value
    legacy = cbor2.loads(vec(LEGACY)).value
    mixed = cbor2.dumps(cbor2.CBORTag(907, {44234: list(good[44234]), 44241: list(legacy[44241])}))
    tv = CcaVerifier().verify(mixed, reference=ReferenceValues(platform_keys=keys(vec, IAK)))
    assert st(tv, "signature") is Status.VERIFIED and st(tv, "realm_signature") is Status.VERIFIED
    assert st(tv, "rak_binding") is Status.FAILED and "swapped" in tv.get("rak_binding").reason
    assert not tv.ok


@pytest.mark.vectors
def test_bstr_form_of_the_collection(vec):
    """The same COSE_Sign1 bytes as plain byte strings instead of [content-format, bstr]."""
    c = cbor2.loads(vec(GOOD)).value
    plain = cbor2.dumps(cbor2.CBORTag(907, {44234: c[44234][1], 44241: c[44241][1]}))
    t = cca.parse(plain)
    assert not t.wrapped
    assert CcaVerifier().verify(plain, reference=ReferenceValues(platform_keys=keys(vec, IAK))).ok


@pytest.mark.vectors
def test_reference_values(vec):
    t = cca.parse(vec(GOOD))
    ref = ReferenceValues(measurement=t.rim, personalization=t.personalization, report_data=t.challenge,
                          rems=[t.rems[0], None, None, t.rems[3]])
    tv = CcaVerifier().verify(vec(GOOD), reference=_with_key(ref, keys(vec, IAK)))
    assert tv.ok and all(st(tv, n) is Status.VERIFIED
                         for n in ("measurement", "personalization", "report_data", "rems"))
    for field, bad in (("measurement", bytes(len(t.rim))), ("personalization", bytes(64)),
                       ("report_data", bytes(64)), ("rems", [None, bytes(len(t.rems[1]))])):
        ref = ReferenceValues(**{field: bad})
        tv = CcaVerifier().verify(vec(GOOD), reference=_with_key(ref, keys(vec, IAK)))
        assert [c.name for c in tv.failures] == [field], tv.to_text()


# -- bad input ----------------------------------------------------------------------------------------

@pytest.mark.vectors
def test_bad_tokens_are_unusable_input(vec):
    ev = vec(GOOD)
    v = CcaVerifier()
    with pytest.raises(EvidenceError):
        v.verify(ev[:-10])
    with pytest.raises(EvidenceError, match="trailing"):
        v.verify(ev + b"\x00")
    with pytest.raises(EvidenceError, match="tag 399 is not expected"):
        v.verify(cbor2.dumps(cbor2.CBORTag(399, {})))
    c = cbor2.loads(ev).value
    with pytest.raises(EvidenceError, match="exactly a platform token"):
        v.verify(cbor2.dumps(cbor2.CBORTag(907, {44234: list(c[44234])})))
    with pytest.raises(EvidenceError, match="tag 1 is not allowed"):    # a tag where none belongs
        v.verify(cbor2.dumps(cbor2.CBORTag(907, {44234: cbor2.CBORTag(1, 0), 44241: 1})))


# -- keepbook verify ----------------------------------------------------------------------------------

@pytest.mark.vectors
def test_cli_cca_json(vectors, capsys):
    code = main([str(vectors / GOOD), "--certs", str(vectors / IAK), "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 0 and doc["kind"] == "cca" and doc["verified"] is True
    chain = next(c for c in doc["claims"] if c["name"] == "chain")
    assert chain["detail"]["platform_key"] == "user-supplied"
    code = main([str(vectors / GOOD), "--json"])
    assert code == 1 and json.loads(capsys.readouterr().out)["verified"] is False
    bad = vectors / "cca" / "ccatoken__test_common.go__testGoodCCAToken.cbor"
    code = main([str(bad), "--certs", str(vectors / GOOD)])      # a token is not a key
    assert code == 2 and "not a public key" in capsys.readouterr().err
