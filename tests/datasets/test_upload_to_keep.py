"""Sealed datasets into a real Keep: `keepbook seal --to` by the owner, `%upload` (agent.upload)
by the analyst, read-only at /data/NAME; every tampering refused with its reason and nothing
partially exposed under /data."""

from __future__ import annotations

import pytest

from keepbook import cli
from keepbook.keep.shared import dataset_format
from keepbook.kernel import dataset_sealer
from keepbook.kernel.agent import ClientAgent, NewKeep
from keepbook.kernel.client import KeepError

CSV = "id,age\n" + "".join(f"{i},{20 + i % 50}\n" for i in range(2000))


@pytest.fixture(scope="module")
def env(shared_manager, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ds")
    tf = tmp / "token"
    tf.write_text(shared_manager.token)
    (tmp / "owner.pem").write_bytes(dataset_sealer.new_owner_key_pem())
    (tmp / "patients.csv").write_text(CSV)
    agent = ClientAgent()
    session = agent.call(agent.new_keep(NewKeep(backend="sim-snp", profile="staging",
                                                manager=shared_manager.url, token_file=str(tf))))
    yield agent, session, tmp, tf, shared_manager
    agent.stop()


def run(agent, code):
    events = []
    status = agent.call(agent.run("python", events.append, code=code), timeout=120)
    return "".join(e.content.get("text", "") for e in events if e.kind == "stream"), events, status


def listing(agent):
    return run(agent, "import os; print(sorted(os.listdir('/data')))")[0].strip()


def owner_seal(env, out, *extra):
    agent, session, tmp, tf, mgr = env
    # the owner states what they expect: a staging Keep, simulated accepted (a demo), this one
    return cli.main(["seal", str(tmp / "patients.csv"), "--to", mgr.url, "--keep", session.id,
                     "--token-file", str(tf), "--owner-key", str(tmp / "owner.pem"),
                     "--profile", "staging", "--allow-simulated",
                     "--keep-fingerprint", session.attestation.fingerprint if session.attestation
                     else agent.call(agent.attest()).fingerprint,
                     "-o", str(out), *extra])


def test_owner_seals_analyst_uploads_and_reads(env, capsys):
    agent, session, tmp, *_ = env
    assert owner_seal(env, tmp / "p.sealed", "--pq", "--name", "patients.csv") == 0
    said = capsys.readouterr().out
    assert "RESULT: VERIFIED" in said or "VERIFIED" in said
    assert "mlkem768x25519" in said
    sealed = (tmp / "p.sealed").read_bytes()
    assert b"20,21" not in sealed and CSV.encode()[:40] not in sealed
    receipt = agent.call(agent.upload(str(tmp / "p.sealed")))
    assert receipt["path"] == "/data/patients.csv" and receipt["bytes"] == len(CSV)
    out, _, _ = run(agent, "d = open('/data/patients.csv').read(); print(len(d), d.splitlines()[2])")
    assert out.strip() == f"{len(CSV)} 1,21"
    out, _, _ = run(agent, "try:\n    open('/data/patients.csv', 'a').write('x')\n"
                           "except OSError as e:\n    print('read-only', type(e).__name__)")
    assert "read-only" in out


@pytest.mark.parametrize("damage, reason", [
    (lambda b: b[:3000] + bytes([b[3000] ^ 1]) + b[3001:], "authentication failed"),
    (lambda b: b[:-200], "truncated"),
    (lambda b: b[:len(b) // 2], "truncated"),
])
def test_tampered_upload_is_refused_and_nothing_is_exposed(env, damage, reason):
    agent, session, tmp, *_ = env
    assert owner_seal(env, tmp / "t.sealed", "--name", "tampered.csv", "--chunk-size", "4096") == 0
    (tmp / "t.sealed").write_bytes(damage((tmp / "t.sealed").read_bytes()))
    before = listing(agent)
    with pytest.raises(KeepError) as exc:
        agent.call(agent.upload(str(tmp / "t.sealed")))
    assert reason in str(exc.value) and "nothing was exposed under /data" in str(exc.value)
    assert listing(agent) == before and "tampered" not in before


def test_reordered_chunks_are_refused(env):
    agent, session, tmp, *_ = env
    assert owner_seal(env, tmp / "r.sealed", "--name", "reordered.csv", "--chunk-size", "4096") == 0
    blob = (tmp / "r.sealed").read_bytes()
    parts, pos = [], 0
    while pos < len(blob):
        _, n = dataset_format.FRAME.unpack_from(blob, pos)
        parts.append(blob[pos:pos + dataset_format.FRAME.size + n])
        pos += dataset_format.FRAME.size + n
    parts[1], parts[2] = parts[2], parts[1]
    (tmp / "r.sealed").write_bytes(b"".join(parts))
    with pytest.raises(KeepError, match="authentication failed"):
        agent.call(agent.upload(str(tmp / "r.sealed")))
    assert "reordered" not in listing(agent)


def test_sealed_to_another_keep_is_refused(env, shared_manager, tmp_path):
    agent, session, tmp, tf, _ = env
    other = ClientAgent()
    try:
        s2 = other.call(other.new_keep(NewKeep(backend="nil", profile="staging",
                                               manager=shared_manager.url, token_file=str(tf))))
        trust = tmp_path / "owner-trust.toml"  # this owner accepts a nil Keep, on purpose
        trust.write_text("require_hardware = false\nallow_nil = true\n")
        assert cli.main(["seal", str(tmp / "patients.csv"), "--to", shared_manager.url, "--keep",
                         s2.id, "--token-file", str(tf), "--owner-key", str(tmp / "owner.pem"),
                         "--profile", "staging", "--trust-policy", str(trust),
                         "--name", "other.csv", "-o", str(tmp_path / "o.sealed")]) == 0
    finally:
        other.stop()
    with pytest.raises(KeepError, match="wrong key"):
        agent.call(agent.upload(str(tmp_path / "o.sealed")))


def test_wrong_owner_signature_is_refused(env, tmp_path):
    agent, *_ = env
    assert owner_seal(env, tmp_path / "s.sealed", "--name", "signed.csv") == 0
    blob = bytearray((tmp_path / "s.sealed").read_bytes())
    blob[-10] ^= 1  # inside the signature, in the trailer
    (tmp_path / "s.sealed").write_bytes(bytes(blob))
    with pytest.raises(KeepError, match="owner signature|signature trailer"):
        agent.call(agent.upload(str(tmp_path / "s.sealed")))
    assert "signed.csv" not in listing(agent)


def test_owner_policy_tightens_the_keep_and_profile_rule(env, tmp_path):
    agent, session, tmp, *_ = env
    (tmp_path / "strict.toml").write_text("[data]\nprofiles = ['production']\n")
    # the owner's own CLI refuses to seal for a staging Keep ...
    assert owner_seal(env, tmp_path / "x.sealed", "--policy", str(tmp_path / "strict.toml")) == 2
    # ... and the Keep refuses it too, whoever sealed it
    (tmp_path / "spec.toml").write_text(f'data = "{tmp / "patients.csv"}"\npolicy = "strict.toml"\n'
                                        f'owner_key = "{tmp / "owner.pem"}"\nname = "strict.csv"\n')
    with pytest.raises(KeepError, match="only in profile"):
        agent.call(agent.upload(str(tmp_path / "spec.toml")))
    # a dataset whose owner requires explicit releases makes this staging Keep withhold prints
    (tmp_path / "rel.toml").write_text("[release]\nrequired = true\n")
    (tmp_path / "spec2.toml").write_text(f'data = "{tmp / "patients.csv"}"\npolicy = "rel.toml"\n'
                                         f'owner_key = "{tmp / "owner.pem"}"\nname = "owned.csv"\n')
    receipt = agent.call(agent.upload(str(tmp_path / "spec2.toml")))
    assert receipt["policy"]["release_required"] is True
    out, events, _ = run(agent, "print(open('/data/owned.csv').read()[:20])")
    assert out == "" and any("withheld by policy: release.required" in e.content.get("text", "")
                             for e in events)
