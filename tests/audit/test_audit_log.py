"""The audit log (keep/audit_format.py): a removed, reordered or edited entry, a cut tail, another
Keep's key or config — each detected and named.  Then a real Keep's log through %audit's agent
call and `keepbook audit verify FILE` offline."""

from __future__ import annotations

import io

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from keepbook import cli
from keepbook.keep.shared import protocol
from keepbook.kernel.agent import ClientAgent, NewKeep
from keepbook.keep.inside import audit_log
from keepbook.keep.shared import audit_format


def make_log(n: int = 5):
    key = ed25519.Ed25519PrivateKey.generate()
    config = protocol.KeepConfig(keep_id="test-keep", backend="nil", profile="production",
                                 limits=dict(protocol.DEFAULT_LIMITS), policy=b"", runtime={},
                                 keys={audit_format.AUDIT_KEY: key.public_key().public_bytes_raw()})
    log = audit_log.AuditLog("k1", config.digest(), key)
    log.append("start", {"profile": "production", "policy_digest": "sha256:" + "0" * 64})
    for i in range(n - 1):
        log.append("release", {"digest": f"sha256:{i:064x}", "type": "number", "bytes": 10, "note": "n"})
    return log, config


def entries(blob: bytes) -> list[bytes]:
    out, stream = [], io.BytesIO(blob)
    import cbor2
    while stream.tell() < len(blob):
        start = stream.tell()
        cbor2.CBORDecoder(stream).decode()
        out.append(blob[start:stream.tell()])
    return out


def check(exp, config, blob=None, head=None, sig=None):
    return audit_format.verify_export(exp["entries"] if blob is None else blob,
                               exp["head"] if head is None else head,
                               exp["signature"] if sig is None else sig, config)


def test_intact_log_verifies():
    log, config = make_log()
    v = check(log.export(), config)
    assert len(v.entries) == 5 and [r["kind"] for r in v.table()][:2] == ["start", "release"]


def test_removed_entry():
    log, config = make_log()
    exp = log.export()
    parts = entries(exp["entries"])
    with pytest.raises(audit_format.AuditError, match="chain: entry at position 2"):
        check(exp, config, blob=b"".join(parts[:2] + parts[3:]))


def test_reordered_entries():
    log, config = make_log()
    exp = log.export()
    p = entries(exp["entries"])
    with pytest.raises(audit_format.AuditError, match="chain"):
        check(exp, config, blob=b"".join([p[0], p[2], p[1], p[3], p[4]]))


def test_edited_entry():
    log, config = make_log()
    exp = log.export()
    p = entries(exp["entries"])
    e = protocol.loads(p[2])
    e["data"]["note"] = "something else"
    p[2] = protocol.dumps(e)
    with pytest.raises(audit_format.AuditError, match="entry 3 does not follow entry 2"):
        check(exp, config, blob=b"".join(p))


def test_edited_last_entry_and_cut_tail():
    log, config = make_log()
    exp = log.export()
    p = entries(exp["entries"])
    e = protocol.loads(p[-1])
    e["kind"] = "refusal"
    with pytest.raises(audit_format.AuditError, match="head"):
        check(exp, config, blob=b"".join(p[:-1] + [protocol.dumps(e)]))
    with pytest.raises(audit_format.AuditError, match="head: the signed head counts 5 entries"):
        check(exp, config, blob=b"".join(p[:-1]))


def test_forged_head():
    log, config = make_log()
    exp = log.export()
    with pytest.raises(audit_format.AuditError, match="signature"):
        check(exp, config, head={**exp["head"], "count": 4})


def test_other_keeps_key_or_config():
    log, config = make_log()
    other_log, other_config = make_log()
    with pytest.raises(audit_format.AuditError, match="signature"):
        check(log.export(), other_config)
    no_key = protocol.KeepConfig(keep_id="test-keep", backend="nil", profile="production",
                                 limits=dict(protocol.DEFAULT_LIMITS), policy=b"", runtime={})
    with pytest.raises(audit_format.AuditError, match="binding"):
        check(log.export(), no_key)


# ---------------------------------------------------------------- a real Keep


@pytest.fixture(scope="module")
def keep_log(shared_manager, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("audit")
    tf = tmp / "token"
    tf.write_text(shared_manager.token)
    agent = ClientAgent()
    try:
        agent.call(agent.new_keep(NewKeep(backend="sim-snp", profile="production",
                                          manager=shared_manager.url, token_file=str(tf))))
        ev: list = []
        agent.call(agent.run("python", ev.append, code="import keep; keep.release(7, note='seven')"))
        agent.call(agent.run("python", ev.append, code="print('raw rows')"))
        log = agent.call(agent.audit())
    finally:
        agent.stop()
    path = tmp / "keep.audit.cbor"
    path.write_bytes(log.raw)
    return log, path


def test_keep_log_records_profile_cells_release_refusal(keep_log):
    log, _ = keep_log
    kinds = [e["kind"] for e in log.entries]
    assert kinds == ["start", "cell", "release", "cell", "refusal"]
    assert log.entries[0]["data"]["profile"] == "production"
    assert log.entries[2]["data"]["note"] == "seven"
    assert log.entries[4]["data"]["rule"] == "release.required"


def test_offline_verify(keep_log, capsys):
    _, path = keep_log
    assert cli.main(["audit", "verify", str(path)]) == 0
    out = capsys.readouterr().out
    assert "✔ attestation: SIMULATED" in out and "chain: 5 entries" in out
    assert "withheld" in out and "released number" in out


def test_offline_verify_detects_an_edited_file(keep_log, tmp_path, capsys):
    _, path = keep_log
    raw = audit_format.read_file(path.read_bytes())
    p = entries(raw["entries"])
    e = protocol.loads(p[4])
    e["data"]["rule"] = "nothing"
    raw["entries"] = b"".join(p[:4] + [protocol.dumps(e)])
    bad = tmp_path / "bad.cbor"
    bad.write_bytes(protocol.dumps(raw))
    assert cli.main(["audit", "verify", str(bad)]) == 2
    assert "FAILED head" in capsys.readouterr().err
