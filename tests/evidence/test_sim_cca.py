"""sim-cca and hardware CCA Keeps: the simulated platform makes byte-exact CCA tokens that the
real verifier accepts — labelled SIMULATED, against this installation's simulated platform key —
and the client takes a CCA platform key only from the user (trust policy), never from the Keep."""

from __future__ import annotations

import hashlib
import os

import cbor2
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from keepbook.keep.inside import providers
from keepbook.keep.inside.simulated_tee import vendor
from keepbook.keep.shared import facts, measurement, protocol
from keepbook.keep.shared.evidence import cca, cose, detect_kind, simulated_roots
from keepbook.keep.shared.evidence.certs import format_fingerprint, spki_sha256
from keepbook.keep.shared.evidence.cca_verify import CcaVerifier
from keepbook.keep.shared.evidence.trust import ReferenceValues, Status
from keepbook.kernel.attestation import ExpectationBuilder, verify_attestation
from keepbook.kernel.trust_policy import TrustPolicy, TrustPolicyError

RD = bytes(range(64))


def _sim_anchor() -> dict:
    return {"certs": simulated_roots.simulated_ca_certs("cca"),
            "simulated_roots": simulated_roots.simulated_root_digests("cca")}


def _made(**kw) -> tuple[bytes, list[bytes]]:
    return vendor.make_evidence("sim-cca", kw.pop("rd", RD), kw.pop("m", measurement.measurement(64)), **kw)


def _token(**kw) -> bytes:
    return _made(**kw)[0]


def test_facts_and_measurement_length():
    assert facts.backend("sim-cca").evidence == "cca" and facts.backend("sim-cca").simulated
    assert facts.backend("cca").hardware and facts.measurement_length("cca") == 64
    assert measurement.measurement(64)[:48] != measurement.measurement(48)   # SHA-512, not padded
    with pytest.raises(ValueError, match="must be 64 bytes"):
        vendor.make_evidence("sim-cca", RD, measurement.measurement(48))


def test_sim_cca_token_is_byte_exact_and_binds_what_it_should():
    ev = _token()
    assert detect_kind(ev) == "cca"
    t = cca.parse(ev)
    assert cca.build(t.platform, t.realm, wrapped=t.wrapped) == ev        # byte-exact round trip
    assert t.challenge == RD and t.rim == measurement.measurement(64)
    assert t.platform_challenge == hashlib.sha256(t.rak).digest()
    assert t.lifecycle_name == "secured" and t.personalization == bytes(64)
    assert cca.parse(_token()).rak != t.rak                               # a RAK per token
    plain = _token(wrapped=False)
    assert not cca.parse(plain).wrapped and cbor2.loads(plain).tag == cca.TAG_COLLECTION


def test_sim_cca_verifies_as_simulated_only_with_the_simulated_key():
    ev = _token()
    tv = CcaVerifier().verify(ev, reference=ReferenceValues(report_data=RD,
                                                             measurement=measurement.measurement(64)),
                              **_sim_anchor())
    assert tv.ok and tv.protection == "simulated" and "SIMULATED" in tv.get("chain").reason
    for name in ("signature", "realm_signature", "rak_binding", "lifecycle", "measurement", "report_data"):
        assert tv.get(name).status is Status.VERIFIED, name
    # without the simulated root (trust policy forbids simulation) nothing vouches for it
    tv = CcaVerifier().verify(ev)
    assert not tv.ok and tv.get("chain").status is Status.FAILED and tv.protection == "none"


@pytest.mark.parametrize("mutate,claim", [
    (lambda: _token(debug=True), "lifecycle"),
    (lambda: _token(rd=bytes(64)), "report_data"),
    (lambda: _token(m=bytes(64)), "measurement"),
])
def test_sim_cca_mutations_fail_the_named_claim(mutate, claim):
    ref = ReferenceValues(report_data=RD, measurement=measurement.measurement(64))
    tv = CcaVerifier().verify(mutate(), reference=ref, **_sim_anchor())
    assert [c.name for c in tv.failures] == [claim], tv.to_text()


def test_sim_cca_tampered_bytes_and_swapped_realm():
    ev = _token()
    i = ev.find(RD)
    flipped = ev[:i] + bytes([ev[i] ^ 1]) + ev[i + 1:]
    tv = CcaVerifier().verify(flipped, **_sim_anchor())
    assert tv.get("realm_signature").status is Status.FAILED and not tv.ok
    a, b = cbor2.loads(ev).value, cbor2.loads(_token()).value
    mixed = cbor2.dumps(cbor2.CBORTag(907, {44234: list(a[44234]), 44241: list(b[44241])}))
    tv = CcaVerifier().verify(mixed, **_sim_anchor())
    assert tv.get("rak_binding").status is Status.FAILED and not tv.ok


def test_simulated_provider_and_root_files():
    kind, ev, certs = providers.get_evidence("sim-cca", RD)
    root = simulated_roots.simulated_ca_certs("cca")
    assert kind == "cca" and certs == root and len(root) == 1   # the simulated key's certificate
    assert simulated_roots.simulated_root_digests("cca") == [spki_sha256(root[0])]
    assert simulated_roots.root_certificate("cca") == root[0]      # what a keep manager announces
    # sent along, it proves nothing by itself: without the accepted digest the chain fails
    tv = CcaVerifier().verify(ev, certs=certs)
    assert tv.get("chain").status is Status.FAILED and tv.get("chain").detail["root_trusted"] is False
    key_file = simulated_roots.sim_roots_dir() / "cca" / "platform.key"
    assert key_file.stat().st_mode & 0o077 == 0       # the private half stays private


# -- the client: verify_attestation ------------------------------------------------------------

NONCE = os.urandom(32)


def _response(backend: str, **token_kw):
    config = protocol.KeepConfig(backend=backend, profile="staging", limits=dict(protocol.DEFAULT_LIMITS),
                                 policy=b"", runtime={"keepbook": "test"}, keep_id="k1")
    hpke = os.urandom(32)
    rd = protocol.report_data(NONCE, hpke, config.digest())
    sent = token_kw.pop("certs", None)
    ev, certs = _made(rd=rd, **token_kw)
    certs = certs if sent is None else sent
    return protocol.AttestResponse(evidence_kind="cca", evidence=ev, certs=certs, hpke_suite="x25519-hkdfsha256-aes128gcm",
                                   hpke_public_key=hpke, config=config.to_cbor(), nonce=NONCE)


def _verify(resp, backend, policy: TrustPolicy):
    expect = (ExpectationBuilder().nonce(NONCE).requested(protocol.CreateKeep(backend=backend))
              .keep_id("k1").trust_policy(policy).build())
    return verify_attestation(resp, expect).vector


def _pem(key) -> str:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def _spki(key) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


def test_client_accepts_a_sim_cca_keep_as_simulated():
    tv = _verify(_response("sim-cca"), "sim-cca", TrustPolicy())
    assert tv.ok, tv.to_text()
    assert tv.protection == "simulated" and "SIMULATED" in tv.label
    assert "measurement" in tv.required and tv.get("measurement").status is Status.VERIFIED
    tv = _verify(_response("sim-cca"), "sim-cca", TrustPolicy(allow_simulated=False))
    assert not tv.ok and tv.get("chain").status is Status.FAILED


def test_client_ignores_platform_keys_that_come_from_the_keep():
    """A host that signs its own token and sends its own key along gets nowhere."""
    rogue = ec.generate_private_key(ec.SECP384R1())
    resp = _response("cca", platform_key=rogue, certs=[_spki(rogue)])
    tv = _verify(resp, "cca", TrustPolicy())
    assert not tv.ok and tv.get("chain").status is Status.FAILED
    assert "cca_platform_keys" in tv.get("chain").reason
    resp = _response("sim-cca", platform_key=rogue, certs=[_spki(rogue)])
    assert not _verify(resp, "sim-cca", TrustPolicy()).ok


def test_hardware_cca_keep_needs_a_platform_key_from_the_trust_policy(tmp_path):
    device = ec.generate_private_key(ec.SECP384R1())
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "cpak.pem").write_text(_pem(device))
    (tmp_path / "trust.toml").write_text('cca_platform_keys = ["keys/cpak.pem"]\n')
    policy = TrustPolicy.load(tmp_path / "trust.toml")           # relative to the policy file
    assert policy.platform_key_ders == (_spki(device),)
    tv = _verify(_response("cca", platform_key=device), "cca", policy)
    assert tv.ok, tv.to_text()
    assert tv.protection == "hardware"
    assert tv.get("chain").detail["platform_key"] == "user-supplied"
    assert "YOU SUPPLIED" in tv.get("chain").reason
    assert "trust policy" in tv.get("protection").reason and "user-supplied" in tv.get("protection").reason
    for name in ("lifecycle", "rak_binding", "realm_signature", "report_data", "freshness"):
        assert name in tv.required and tv.get(name).status is Status.VERIFIED, name
    # another device's key, or none: refused, saying which check failed
    other = TrustPolicy.from_toml(f'cca_platform_keys = ["""{_pem(ec.generate_private_key(ec.SECP384R1()))}"""]')
    tv = _verify(_response("cca", platform_key=device), "cca", other)
    assert not tv.ok and "does not verify with any" in tv.get("chain").reason
    tv = _verify(_response("cca", platform_key=device), "cca", TrustPolicy())
    assert not tv.ok and "no platform key was given" in tv.get("chain").reason
    # a debug-lifecycle platform is refused on hardware, naming the lifecycle
    tv = _verify(_response("cca", platform_key=device, debug=True), "cca", policy)
    assert [c.name for c in tv.failures] == ["lifecycle"]


def test_trust_policy_platform_keys_bad_input(tmp_path):
    with pytest.raises(TrustPolicyError, match=r"cca_platform_keys\[0\]: cannot read"):
        TrustPolicy.from_toml('cca_platform_keys = ["missing.pem"]', base_dir=tmp_path)
    with pytest.raises(TrustPolicyError, match="JWK must be an EC key"):
        TrustPolicy.from_toml('cca_platform_keys = [\'{"kty": "RSA"}\']')
    (tmp_path / "junk").write_bytes(b"not a key")
    with pytest.raises(TrustPolicyError, match="not a public key"):
        TrustPolicy.from_toml('cca_platform_keys = ["junk"]', base_dir=tmp_path)
    with pytest.raises(TrustPolicyError, match="list of strings"):
        TrustPolicy.from_toml("cca_platform_keys = [1]")
    jwk = cose.encode_key(ec.generate_private_key(ec.SECP256R1()).public_key())
    assert cose.ec_key(jwk).curve.name == "secp256r1"                  # COSE_Key round trip


def test_another_installations_sim_cca_root_is_accepted_only_on_purpose(tmp_path, monkeypatch):
    """A teacher's keep manager runs sim-cca Keeps with its own simulated platform key: the first
    attestation fails showing that key's fingerprint and how to accept it; accepted, it is
    SIMULATED and says whose key it is."""
    from keepbook.kernel.sim_trust import SimRootTrust
    own = tuple(simulated_roots.simulated_root_digests("cca"))
    monkeypatch.setenv("KEEPBOOK_SIM_ROOTS", str(tmp_path / "teacher-roots"))
    resp = _response("sim-cca")                       # signed by the teacher's simulated key
    theirs = simulated_roots.simulated_root_digests("cca")[0]
    monkeypatch.undo()
    assert theirs not in own

    def verify(sim: SimRootTrust):
        expect = (ExpectationBuilder().nonce(NONCE).requested(protocol.CreateKeep(backend="sim-cca"))
                  .keep_id("k1").trust_policy(TrustPolicy()).sim_trust(sim).build())
        return verify_attestation(resp, expect).vector

    first = SimRootTrust(manager="http://teacher:8473", kind="cca", allowed=True, own=own)
    tv = verify(first)
    chain = tv.get("chain")
    assert not tv.ok and chain.status is Status.FAILED
    assert format_fingerprint(theirs) in chain.reason and "--trust-sim-root" in chain.reason
    accepted = SimRootTrust(manager="http://teacher:8473", kind="cca", allowed=True, own=own,
                            explicit={theirs: "with --trust-sim-root"})
    tv = verify(accepted)
    assert tv.ok, tv.to_text()
    assert tv.protection == "simulated" and "teacher" in tv.get("protection").reason


def test_keepbook_verify_a_sim_cca_token(tmp_path, capsys):
    from keepbook.kernel.verify_cli import main
    f = tmp_path / "token.cbor"
    f.write_bytes(_token())
    assert main([str(f), "--allow-simulated", "--report-data", RD.hex()]) == 0
    assert "SIMULATED" in capsys.readouterr().out
    assert main([str(f)]) == 1                        # no simulation allowed, no key given
    assert "no platform key was given" in capsys.readouterr().out
