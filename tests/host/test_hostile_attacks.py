"""Every named attack of the teaching hostile manager is caught before anything is sent."""

from __future__ import annotations

import pytest
import wasmtime

from keepbook.keep.host.hostile import ATTACKS, HostileManager
from keepbook.kernel.agent import ClientAgent, NewKeep
from keepbook.kernel.client import AttestationRefused, KeepError
from tests.conftest import HELLO_WAT

MODULE = bytes(wasmtime.wat2wasm(HELLO_WAT))
EXPECTED = {"flip-evidence": "signature", "change-report-data": "report_data",
            "swap-hpke-key": "key_binding", "drop-chain": "chain", "downgrade-profile": "profile"}


@pytest.fixture(scope="module")
def agent():
    a = ClientAgent()
    yield a
    a.stop()


@pytest.mark.parametrize("attack", [a for a in ATTACKS if a != "none"])
def test_named_attack_is_caught(agent, shared_manager, tmp_path, attack):
    tf = tmp_path / "t"
    tf.write_text(shared_manager.token)
    with HostileManager(shared_manager.url, attack) as host:
        agent.call(agent.new_keep(NewKeep(backend="sim-snp", manager=host.url, token_file=str(tf))))
        try:
            if attack == "replay":
                agent.call(agent.attest())  # genuine; the host records it
                with pytest.raises(AttestationRefused) as exc:
                    agent.call(agent.attest())  # the host answers with the recording
            else:
                with pytest.raises((AttestationRefused, KeepError)) as exc:
                    agent.call(agent.run("wasm", lambda e: None, module=MODULE))
            if attack in EXPECTED:
                assert isinstance(exc.value, AttestationRefused)
                assert EXPECTED[attack] in [c.name for c in exc.value.result.vector.failures]
                assert not host.saw("/provision")
            if attack == "replay":
                assert "freshness" in [c.name for c in exc.value.result.vector.failures]
            if attack == "substitute-endpoint-cert":
                assert "substituted" in str(exc.value)
            assert MODULE not in b"".join(host.relayed)
        finally:
            agent.call(agent.close())


def test_faithful_host_works(agent, shared_manager, tmp_path):
    tf = tmp_path / "t"
    tf.write_text(shared_manager.token)
    with HostileManager(shared_manager.url, "none") as host:
        agent.call(agent.new_keep(NewKeep(backend="sim-snp", manager=host.url, token_file=str(tf))))
        out = []
        status = agent.call(agent.run("wasm", out.append, module=MODULE))
        agent.call(agent.close())
    assert status["ok"] and "hello from the Keep" in out[0].content["text"]


def test_unknown_attack_is_refused():
    with pytest.raises(ValueError, match="unknown attack"):
        HostileManager("http://127.0.0.1:1", "teleport")
