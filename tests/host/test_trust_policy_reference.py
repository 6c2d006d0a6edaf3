"""The user's trust policy can carry reference values ([reference]); each one given becomes a
required claim of the trust vector."""

from __future__ import annotations

import pytest

from keepbook.keep.shared import measurement
from keepbook.kernel.agent import ClientAgent, NewKeep
from keepbook.kernel.client import AttestationRefused


@pytest.fixture(scope="module")
def agent():
    a = ClientAgent()
    yield a
    a.stop()


def _attest(agent, shared_manager, tmp_path, policy_text):
    tf, pf = tmp_path / "t", tmp_path / "trust.toml"
    tf.write_text(shared_manager.token)
    pf.write_text(policy_text)
    agent.call(agent.new_keep(NewKeep(backend="sim-snp", manager=shared_manager.url, token_file=str(tf),
                                      trust_policy=str(pf))))
    try:
        return agent.call(agent.attest())
    finally:
        agent.call(agent.close())


def test_matching_reference_values_are_required_and_verified(agent, shared_manager, tmp_path):
    good = measurement.measurement(48).hex()
    result = _attest(agent, shared_manager, tmp_path,
                     f'[reference]\nmeasurement = "{good}"\nvmpl = 0\nmin_tcb = {{ snp = 1 }}\n')
    for claim in ("measurement", "vmpl", "tcb"):
        assert claim in result.vector.required and result.vector.get(claim).status.value == "verified"


@pytest.mark.parametrize("table,claim", [
    ('measurement = "' + "00" * 48 + '"', "measurement"),
    ("vmpl = 2", "vmpl"),
    ("min_tcb = { snp = 250 }", "tcb"),
    ('host_data = "' + "11" * 32 + '"', "host_data"),
])
def test_a_wrong_reference_value_refuses_the_keep(agent, shared_manager, tmp_path, table, claim):
    with pytest.raises(AttestationRefused) as exc:
        _attest(agent, shared_manager, tmp_path, f"[reference]\n{table}\n")
    assert claim in [c.name for c in exc.value.result.vector.failures]
