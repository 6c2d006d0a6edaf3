"""A hostile host against the data owner (issue 12, items 4 and 10).

The owner seals a dataset to "the analyst's Keep" through a keep manager the host runs.  The
host may answer the owner's attestation request with anything: a forged ``nil`` attestation
carrying the host's own dataset key, or fresh evidence from a twin Keep it started with the
same config (and even the same id).  What the owner expects comes from the owner — hardware
by default, the profile, the fingerprint the analyst read out — never from the Keep's answer,
so each of these is refused with the failing claim named and nothing is sealed.

The host can also swap the HPKE suite the Keep names (the name is relayed, only the key is
bound by the evidence): a named failing claim, not an internal error."""

from __future__ import annotations

import pytest

from keepbook import cli
from keepbook.keep.inside.identity import KeepIdentity, KeepKeys
from keepbook.keep.shared import measurement, protocol as p
from keepbook.kernel import dataset_sealer
from keepbook.kernel.agent import ClientAgent, NewKeep
from keepbook.kernel.client import AttestationRefused
from tests.hostile.hostile_manager import HostileManager
from tests.hostile.pipes import PipeKeep
from tests.hostile.report import record


@pytest.fixture(scope="module")
def analyst(mgr, tmp_path_factory):
    """The analyst's production Keep A (sim-snp) and its fingerprint, as `%keep status` shows it."""
    tmp = tmp_path_factory.mktemp("owner")
    tf = tmp / "token"
    tf.write_text(mgr.token)
    (tmp / "patients.csv").write_text("id,age\n1,42\n")
    (tmp / "owner.pem").write_bytes(dataset_sealer.new_owner_key_pem())
    agent = ClientAgent()
    session = agent.call(agent.new_keep(NewKeep(backend="sim-snp", profile="production",
                                                manager=mgr.url, token_file=str(tf))))
    att = agent.call(agent.attest())
    yield agent, session, att, tmp
    agent.stop()


def nonce_catcher(seen: list[bytes]):
    def request_hook(method, path, body):
        if path.endswith("/attest"):
            seen.append(p.AttestRequest.from_cbor(body).nonce)
        return body
    return request_hook


def owner_seal(proxy: HostileManager, keep_id: str, tmp, *extra: str) -> int:
    return cli.main(["seal", str(tmp / "patients.csv"), "--to", proxy.url, "--keep", keep_id,
                     "--token-file", str(tmp / "token"), "--owner-key", str(tmp / "owner.pem"),
                     "-o", str(tmp / "out.sealed"), *extra])


def refused(capsys, tmp) -> str:
    err = capsys.readouterr().err
    assert "nothing was sealed" in err, err
    assert not (tmp / "out.sealed").exists()
    return err


def test_a_forged_nil_attestation_with_the_hosts_key_is_refused(analyst, mgr, capsys):
    """4(a): the host answers with NO PROTECTION evidence it made itself, binding the owner's
    fresh nonce, the Keep's id, the production profile — and a dataset key the host holds."""
    agent, session, att, tmp = analyst
    nonces: list[bytes] = []
    host_keys = KeepKeys.generate()
    forged_config = p.KeepConfig(backend="nil", profile="production", limits=dict(att.config.limits),
                                 policy=att.config.policy, runtime=measurement.runtime_versions(),
                                 keys=host_keys.public(), keep_id=session.id)
    forger = KeepIdentity(session.id, forged_config)

    def forge(method, path, body, status):
        if path.endswith("/attest"):
            return forger.attest(p.AttestRequest(nonce=nonces[-1])).to_cbor(), 200
        return body, status
    with HostileManager(mgr.url, forge, nonce_catcher(nonces)) as proxy:
        for extra in ([], ["--allow-simulated"], ["--profile", "production", "--allow-simulated"]):
            assert owner_seal(proxy, session.id, tmp, *extra) == 2
            err = refused(capsys, tmp)
            assert "Failing claim: protection" in err, err
    # only a trust policy of the owner's own that allows nil would accept it — never the Keep
    record("attack", "owner sealing: forged nil attestation with the host's dataset key")


def test_a_twin_keep_with_the_same_id_is_refused_by_the_fingerprint(analyst, mgr, capsys):
    """4(b): the host started a twin Keep B with A's config *and* A's id, and answers the
    owner's request for A with B's fresh, genuine evidence.  Only the fingerprint the analyst
    read out tells them apart."""
    agent, session, att, tmp = analyst
    cfg = att.config
    twin = PipeKeep(backend="sim-snp")
    try:
        twin.send(p.Start(config=p.dumps({"backend": cfg.backend, "profile": cfg.profile,
                                          "limits": cfg.limits, "policy": cfg.policy}),
                          keep_id=session.id).to_cbor())
        assert isinstance(twin.answer(timeout=30), p.Reply)
        nonces: list[bytes] = []

        def from_twin(method, path, body, status):
            if path.endswith("/attest"):
                twin.send(p.AttestRequest(nonce=nonces[-1]).to_cbor())
                return twin.answer(timeout=60).to_cbor(), 200
            return body, status
        with HostileManager(mgr.url, from_twin, nonce_catcher(nonces)) as proxy:
            # without the fingerprint the twin passes: it is genuine, fresh, the same config and id
            assert owner_seal(proxy, session.id, tmp, "--allow-simulated", "--profile",
                              "production", "-o", str(tmp / "twin.sealed")) == 0
            out = capsys.readouterr().out
            assert "compare the fingerprint above with the one the analyst's `%keep status` shows" in out
            assert att.fingerprint not in out
            # with it, refused, naming the claim
            assert owner_seal(proxy, session.id, tmp, "--allow-simulated", "--profile", "production",
                              "--keep-fingerprint", att.fingerprint) == 2
            err = refused(capsys, tmp)
            assert "Failing claim: keep_fingerprint" in err and att.fingerprint in err, err
    finally:
        twin.close()
    # and the real Keep, through an honest relay, is accepted with the same command
    with HostileManager(mgr.url) as honest:
        assert owner_seal(honest, session.id, tmp, "--allow-simulated", "--profile", "production",
                          "--keep-fingerprint", att.fingerprint) == 0
    (tmp / "out.sealed").unlink()
    record("attack", "owner sealing: twin Keep with the same id and config")


@pytest.mark.parametrize("suite, words", [
    ("x25519-hkdfsha512-chacha20", "unknown HPKE suite 'x25519-hkdfsha512-chacha20'"),
    ("mlkem768x25519-hkdfsha256-aes128gcm", "not a valid mlkem768x25519-hkdfsha256-aes128gcm public key"),
], ids=["unknown suite", "the other suite"])
def test_a_swapped_hpke_suite_is_a_named_failing_claim(mgr, tmp_path, suite, words):
    """10: the host renames the Keep's HPKE suite in transit."""
    tf = tmp_path / "token"
    tf.write_text(mgr.token)

    def swap(method, path, body, status):
        if path.endswith("/attest") and status == 200:
            resp = p.AttestResponse.from_cbor(body)
            resp.hpke_suite = suite
            return resp.to_cbor(), status
        return body, status
    agent = ClientAgent()
    try:
        with HostileManager(mgr.url, swap) as proxy:
            agent.call(agent.new_keep(NewKeep(backend="sim-snp", manager=proxy.url, token_file=str(tf))))
            with pytest.raises(AttestationRefused) as exc:
                agent.call(agent.attest())
            claim = exc.value.result.vector.get("hpke_suite")
            assert claim is not None and claim.status.value == "failed" and words in claim.reason
            assert "Failing claim: hpke_suite" in str(exc.value)
            assert not proxy.saw("/provision")
    finally:
        agent.stop()
    record("attack", f"hpke_suite swapped ({suite})")
