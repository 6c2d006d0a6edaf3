"""Trusting another installation's simulated root on purpose (issue 18): a student's kernel
against a teacher's keep manager.  First contact fails showing the fingerprint and the exact
ways to accept it; an accepted root is remembered per manager (known_sim_roots, like SSH's
known_hosts); a changed root for the same manager is a loud failure; the trust vector says
SIMULATED and whose root it is.  Never a silent accept."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from keepbook.keep.shared.evidence.certs import format_fingerprint, parse_fingerprint
from keepbook.keep.shared.evidence.trust import Status, TrustVector, failed, verified
from keepbook.kernel import magics as mg
from keepbook.kernel import sim_trust
from keepbook.kernel.agent import ClientAgent, NewKeep
from keepbook.kernel.client import AttestationRefused, KeepError
from keepbook.kernel.local_manager import ManagerProcess


def _teacher(tmp: Path, roots: str, port: str = "0") -> ManagerProcess:
    """A keep manager whose Keeps sign with another installation's simulated roots."""
    state = tmp / f"mgr-{roots}"
    state.mkdir(exist_ok=True)
    return ManagerProcess(state, backends="nil,sim-snp", extra=["--port", port],
                          env={"KEEPBOOK_SIM_ROOTS": str(tmp / roots)})


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    m = _teacher(tmp_path_factory.mktemp("teacher"), "teacher-roots")
    yield m
    m.stop()


@pytest.fixture
def agent(tmp_path, monkeypatch):
    monkeypatch.setenv(sim_trust.KNOWN_ENV, str(tmp_path / "known_sim_roots"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))   # no trust.toml of the host's
    a = ClientAgent()
    yield a
    a.stop()


def attest(agent: ClientAgent, spec: NewKeep):
    """A new Keep of ``spec`` attested; the Keep is closed again either way."""
    agent.call(agent.new_keep(spec))
    try:
        return agent.call(agent.attest())
    finally:
        agent.call(agent.close())


def spec_for(m: ManagerProcess, *roots: str, **kw) -> NewKeep:
    return NewKeep(backend="sim-snp", manager=m.url, token_file=str(m.token_file),
                   trust_sim_roots=list(roots), **kw)


def test_first_contact_fails_showing_the_fingerprint_and_how_to_accept(teacher, agent) -> None:
    fp = teacher.sim_roots["sim-snp"]
    session = agent.call(agent.new_keep(spec_for(teacher)))
    assert fp in session.sim_trust.announcement() and "not accepted" in session.sim_trust.announcement()
    with pytest.raises(AttestationRefused) as exc:
        agent.call(agent.attest())
    text = str(exc.value)
    assert "chain: this Keep's evidence is signed by a SIMULATED root you have not accepted" in text
    assert f"--manager {teacher.url}" in text and f"--trust-sim-root {fp}" in text
    assert f'simulated_roots = ["{fp}"]' in text and "trust.toml" in text
    chain = exc.value.result.vector.get("chain")
    assert chain.status is Status.FAILED and chain.detail["root"] == fp
    assert exc.value.result.vector.protection == "none"
    assert session.channel is None                 # nothing was sent
    agent.call(agent.close())
    assert not sim_trust.known_file().exists()     # nothing remembered by a refusal


def test_accepted_root_is_labelled_remembered_and_then_trusted_without_asking(teacher, agent) -> None:
    fp = teacher.sim_roots["sim-snp"]
    result = attest(agent, spec_for(teacher, fp))
    assert result.ok and result.vector.protection == "simulated"
    for name in ("chain", "protection"):
        reason = result.vector.get(name).reason
        assert "SIMULATED" in reason and f"keep manager at {sim_trust.manager_key(teacher.url)}" in reason
        assert "accepted with --trust-sim-root" in reason
    known = sim_trust.lookup(sim_trust.manager_key(teacher.url), "sev-snp")
    assert known is not None and known.fingerprint == fp
    again = attest(agent, spec_for(teacher))       # no option now: remembered
    assert again.ok and "accepted before" in again.vector.get("protection").reason
    assert len([ln for ln in sim_trust.known_file().read_text().splitlines()
                if ln and not ln.startswith("#")]) == 1


def test_the_trust_policy_can_accept_a_root(teacher, agent, tmp_path) -> None:
    policy = tmp_path / "trust.toml"
    policy.write_text(f'simulated_roots = ["{teacher.sim_roots["sim-snp"].upper().replace("SHA256", "sha256")}"]\n')
    result = attest(agent, spec_for(teacher, trust_policy=str(policy)))
    assert result.ok and "by your trust policy's simulated_roots" in result.vector.get("protection").reason
    assert sim_trust.lookup(sim_trust.manager_key(teacher.url), "sev-snp") is not None


def test_another_root_does_not_help(teacher, agent) -> None:
    wrong = format_fingerprint(bytes(32))
    with pytest.raises(AttestationRefused) as exc:
        attest(agent, spec_for(teacher, wrong))
    assert teacher.sim_roots["sim-snp"] in str(exc.value)


def test_a_policy_without_simulation_says_so(teacher, agent, tmp_path) -> None:
    policy = tmp_path / "strict.toml"
    policy.write_text("allow_simulated = false\n")
    with pytest.raises(AttestationRefused) as exc:
        attest(agent, spec_for(teacher, teacher.sim_roots["sim-snp"], trust_policy=str(policy)))
    assert "does not allow simulated Keeps" in str(exc.value)


def test_a_changed_root_for_the_same_manager_is_a_loud_failure(tmp_path, agent) -> None:
    first = _teacher(tmp_path, "roots-a")
    port = first.url.rsplit(":", 1)[1]
    try:
        assert attest(agent, spec_for(first, first.sim_roots["sim-snp"])).ok
    finally:
        first.stop()
    second = _teacher(tmp_path, "roots-b", port)       # same address, other roots
    try:
        new_fp = second.sim_roots["sim-snp"]
        assert new_fp != first.sim_roots["sim-snp"] and second.url == first.url
        for roots in ((), (new_fp,)):                  # accepting the new one does not override
            with pytest.raises(KeepError) as exc:
                agent.call(agent.new_keep(spec_for(second, *roots)))
            text = str(exc.value)
            assert "THE SIMULATED sev-snp ROOT HAS CHANGED" in text
            assert first.sim_roots["sim-snp"] in text and new_fp in text and "line 3" in text
    finally:
        second.stop()


def test_a_manager_that_announces_the_old_root_but_signs_with_another_is_caught() -> None:
    """The contracts answer is only the host's word: the attestation judges the chain's root."""
    a, b = bytes([1]) * 32, bytes([2]) * 32
    trust = sim_trust.SimRootTrust(
        manager="http://127.0.0.1:1", kind="sev-snp", allowed=True,
        remembered=sim_trust.KnownRoot("http://127.0.0.1:1", "sev-snp", a, 3),
        explicit={b: "with --trust-sim-root"}, known_path="known")
    vector = TrustVector(kind="sev-snp", protection="simulated")
    vector.add(verified("chain", "SIMULATED …", root=format_fingerprint(b), root_name="SIMULATED ARK",
                        root_trusted=True), required=True)
    trust.judge(vector)
    chain = vector.get("chain")
    assert chain.status is Status.FAILED and "HAS CHANGED" in chain.reason
    assert vector.protection == "none" and not vector.ok
    # while the remembered root itself passes untouched
    ok = TrustVector(kind="sev-snp", protection="simulated")
    ok.add(verified("chain", "fine", root=format_fingerprint(a), root_trusted=True), required=True)
    trust.judge(ok)
    assert ok.get("chain").reason == "fine"
    assert trust.to_remember(ok) is None              # already remembered
    # and an unknown root reached by a failed chain gets the first-contact message
    unknown = TrustVector(kind="sev-snp", protection="none")
    unknown.add(failed("chain", "not pinned", root=format_fingerprint(b), root_name="X",
                       root_trusted=False), required=True)
    replace(trust, remembered=None, explicit={}).judge(unknown)
    assert "you have not accepted: 'X'" in unknown.get("chain").reason


@pytest.mark.parametrize("text,why", [
    ("http://h:1 sev-snp\n", "line 1: expected MANAGER KIND sha256:"),
    ("# c\nhttp://h:1 sev-snp sha256:12\n", "line 2"),
    (f"http://h:1 tdx {format_fingerprint(bytes(32))}\nhttp://H:1/ tdx {format_fingerprint(bytes([1]) * 32)}\n",
     "lines 1 and 2 give http://h:1 two different tdx roots"),
])
def test_a_broken_known_roots_file_fails_closed_naming_the_line(text: str, why: str) -> None:
    with pytest.raises(sim_trust.KnownRootsError) as exc:
        sim_trust.parse_known(text, "known")
    assert why in str(exc.value)


def test_a_broken_known_roots_file_stops_new_keep(teacher, agent) -> None:
    sim_trust.known_file().write_text(f"{teacher.url} sev-snp sha256:nope\n")
    with pytest.raises(KeepError) as exc:
        agent.call(agent.new_keep(spec_for(teacher)))
    assert "known simulated roots cannot be read" in str(exc.value) and "line 1" in str(exc.value)


def test_manager_key_is_one_form_of_an_address() -> None:
    assert sim_trust.manager_key("HTTPS://Teacher.Example/") == "https://teacher.example:443"
    assert sim_trust.manager_key("http://127.0.0.1:8473") == "http://127.0.0.1:8473"
    assert sim_trust.manager_key("https://[::1]:9/keepmgr/") == "https://[::1]:9/keepmgr"


def test_trust_sim_root_option_parses_completes_and_refuses_garbage() -> None:
    fp = format_fingerprint(bytes(range(32)))
    args = mg.parse_line_magic(f"%keep new --trust-sim-root {fp.upper().replace('SHA256', 'sha256')}").args
    assert args.trust_sim_roots == [fp] and parse_fingerprint(fp) == bytes(range(32))
    assert "--trust-sim-root" in mg.complete_magic("%keep new --trust-s", 19)[0]
    assert mg.complete_magic("%keep new --trust-sim-root ", 27)[0] == ["sha256:"]
    with pytest.raises(mg.MagicError) as exc:
        mg.parse_line_magic("%keep new --trust-sim-root abcdef")
    assert "not a root fingerprint" in str(exc.value)


def test_a_shared_manager_from_the_environment_is_used_without_typing(teacher, agent, monkeypatch) -> None:
    """What JupyterHub's spawner sets up (docs/deploy.md): URL and token reach the kernel."""
    monkeypatch.setenv("KEEPBOOK_MANAGER_URL", teacher.url)
    monkeypatch.setenv("KEEPBOOK_MANAGER_TOKEN", teacher.token)
    session = agent.call(agent.new_keep(NewKeep(backend="nil")))
    try:
        assert session.manager.url == teacher.url and agent.embedded.process is None
    finally:
        agent.call(agent.close())
