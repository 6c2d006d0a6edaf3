"""A keep manager that tampers with the handshake, one field at a time.  Each attack must be
caught by the client *before* any provisioning or cell leaves it, with the failing claim named."""

from __future__ import annotations

import os

import pytest
import wasmtime

from keepbook.keep.shared import protocol as p
from keepbook.kernel.agent import ClientAgent, NewKeep
from keepbook.kernel.client import AttestationRefused, KeepError
from tests.conftest import HELLO_WAT
from tests.support.tamper import TamperingManager

MODULE = bytes(wasmtime.wat2wasm(HELLO_WAT))


def on_attest(mutate):
    def hook(method, path, body, status):
        if path.endswith("/attest") and status == 200:
            resp = p.AttestResponse.from_cbor(body)
            resp = mutate(resp) or resp
            return resp.to_cbor(), status
        return body, status
    return hook


def flip(b: bytes, i: int) -> bytes:
    return b[:i] + bytes([b[i] ^ 1]) + b[i + 1:]


def _with_config(resp: p.AttestResponse, **changes) -> p.AttestResponse:
    cfg = resp.keep_config()
    for k, v in changes.items():
        setattr(cfg, k, v)
    resp.config = cfg.to_cbor()
    return resp


ATTACKS = {
    "evidence byte flipped": (on_attest(lambda r: setattr(r, "evidence", flip(r.evidence, 0x90))), "signature"),
    "report data changed": (on_attest(lambda r: setattr(r, "evidence", flip(r.evidence, 0x50))), "report_data"),
    "nonce echo changed": (on_attest(lambda r: setattr(r, "nonce", os.urandom(32))), "freshness"),
    "host's own HPKE key": (on_attest(lambda r: setattr(r, "hpke_public_key", os.urandom(32))), "report_data"),
    "profile changed in the answer": (on_attest(lambda r: _with_config(r, profile="debug")), "profile"),
    "policy changed in the answer": (on_attest(lambda r: _with_config(r, policy=b"allow_all = true")), "output_policy"),
    "limits changed in the answer": (on_attest(lambda r: _with_config(r, limits={**r.keep_config().limits, "memory_bytes": 2**33})), "config"),
    "certificate chain removed": (on_attest(lambda r: setattr(r, "certs", [])), "chain"),
    "certificate chain reordered to VCEK only": (on_attest(lambda r: setattr(r, "certs", r.certs[:1])), "chain"),
    "evidence kind swapped to nil": (on_attest(lambda r: setattr(r, "evidence_kind", "nil")), "evidence"),
    "garbage evidence": (on_attest(lambda r: setattr(r, "evidence", b"\0" * 100)), "evidence"),
}


@pytest.fixture(scope="module")
def agent():
    a = ClientAgent()
    yield a
    a.stop()


def _attack(agent, shared_manager, tmp_path, hook=None, request_hook=None, backend="sim-snp"):
    proxy = TamperingManager(shared_manager.url, hook, request_hook)
    tf = tmp_path / "token"
    tf.write_text(shared_manager.token + "\n")
    try:
        agent.call(agent.new_keep(NewKeep(backend=backend, manager=proxy.url, token_file=str(tf))))
        return proxy
    except Exception:
        proxy.close()
        raise


@pytest.mark.parametrize("name", list(ATTACKS))
def test_tampered_attestation_is_refused_before_anything_is_sent(agent, shared_manager, tmp_path, name):
    hook, claim = ATTACKS[name]
    proxy = _attack(agent, shared_manager, tmp_path, hook)
    try:
        with pytest.raises(AttestationRefused) as exc:
            agent.call(agent.run("wasm", lambda e: None, module=MODULE))
        failing = [c.name for c in exc.value.result.vector.failures]
        assert claim in failing, (name, exc.value.result.vector.to_text())
        assert "nothing was sent" in str(exc.value)
        assert not any(path.endswith("/provision") for _, path, _ in proxy.requests), proxy.requests
        assert MODULE not in b"".join(proxy.relayed)
    finally:
        agent.call(agent.close())
        proxy.close()


def test_profile_changed_in_transit_is_caught(agent, shared_manager, tmp_path):
    def downgrade(method, path, body):
        if method == "POST" and path == "/v1/keeps":
            req = p.CreateKeep.from_cbor(body)
            req.profile = "debug"  # the host wants the Keep to log to it
            return req.to_cbor()
        return body
    proxy = _attack(agent, shared_manager, tmp_path, request_hook=downgrade)
    try:
        with pytest.raises(AttestationRefused) as exc:
            agent.call(agent.attest())
        profile = exc.value.result.vector.get("profile")
        assert profile is not None and profile.status.value == "failed" and "host changed it" in profile.reason
    finally:
        agent.call(agent.close())
        proxy.close()


def test_replayed_evidence_is_refused(agent, shared_manager, tmp_path):
    recorded: list[bytes] = []

    def replay(method, path, body, status):
        if path.endswith("/attest"):
            if not recorded:
                recorded.append(body)
            else:
                return recorded[0], status
        return body, status
    proxy = _attack(agent, shared_manager, tmp_path, replay)
    try:
        agent.call(agent.attest())  # first: genuine, recorded by the host
        with pytest.raises(AttestationRefused) as exc:
            agent.call(agent.attest())  # second: the host replays the first answer
        assert "freshness" in [c.name for c in exc.value.result.vector.failures]
    finally:
        agent.call(agent.close())
        proxy.close()


def _other_keep_swap(shared_manager, profile):
    from tests.support.http import http
    status, body = http("POST", shared_manager.url + "/v1/keeps",
                        p.CreateKeep(backend="sim-snp", profile=profile).to_cbor(), token=shared_manager.token)
    other_id = p.KeepInfo.from_cbor(body).id

    def swap(method, path, body, status):
        if path.endswith("/attest") and other_id not in path:
            nonce = p.AttestResponse.from_cbor(body).nonce
            _, theirs = http("POST", f"{shared_manager.url}/v1/keeps/{other_id}/attest",
                             p.AttestRequest(nonce=nonce).to_cbor(), token=shared_manager.token)
            return theirs, status  # same nonce, another Keep's key, config and evidence
        return body, status

    def cleanup():
        http("DELETE", f"{shared_manager.url}/v1/keeps/{other_id}", token=shared_manager.token)
    return swap, cleanup


def test_another_keeps_evidence_is_refused(agent, shared_manager, tmp_path):
    """The host answers with a genuine Keep's evidence — one configured the way the host likes
    (debug profile).  The attested config gives it away."""
    swap, cleanup = _other_keep_swap(shared_manager, "debug")
    proxy = _attack(agent, shared_manager, tmp_path, swap)
    try:
        with pytest.raises(AttestationRefused) as exc:
            agent.call(agent.run("wasm", lambda e: None, module=MODULE))
        assert "profile" in [c.name for c in exc.value.result.vector.failures]
        assert not any(path.endswith("/provision") for _, path, _ in proxy.requests)
    finally:
        agent.call(agent.close())
        proxy.close()
        cleanup()


def test_identical_twin_keep_gains_the_host_nothing(agent, shared_manager, tmp_path):
    """The host answers for our Keep with fresh evidence from its twin (the very same config):
    the attested config names the twin's Keep id, so the attestation fails on ``keep_id`` and
    nothing — not even the sealed channel key — is sent."""
    swap, cleanup = _other_keep_swap(shared_manager, "staging")
    proxy = _attack(agent, shared_manager, tmp_path, swap)
    try:
        with pytest.raises(AttestationRefused) as exc:
            agent.call(agent.run("wasm", lambda e: None, module=MODULE))
        assert [c.name for c in exc.value.result.vector.failures] == ["keep_id"]
        assert "answered with another Keep" in str(exc.value)
        assert not any(path.endswith("/provision") for _, path, _ in proxy.requests)
        assert MODULE not in b"".join(proxy.relayed)
    finally:
        agent.call(agent.close())
        proxy.close()
        cleanup()


def test_substituted_endpoint_certificate_is_refused(agent, shared_manager, tmp_path):
    from cryptography.hazmat.primitives.asymmetric import ec
    from keepbook.keep.shared.certificates import self_signed as one_use_certificate

    def substitute(method, path, body, status):
        if path.endswith("/provision") and status == 200:
            resp = p.ProvisionResponse.from_cbor(body)
            resp.server_cert = one_use_certificate(ec.generate_private_key(ec.SECP256R1()), "evil")
            return resp.to_cbor(), status
        return body, status
    proxy = _attack(agent, shared_manager, tmp_path, substitute)
    try:
        with pytest.raises(KeepError, match="substituted"):
            agent.call(agent.run("wasm", lambda e: None, module=MODULE))
        assert MODULE not in b"".join(proxy.relayed)
    finally:
        agent.call(agent.close())
        proxy.close()


def test_redirect_to_a_keep_the_host_controls_is_refused(agent, shared_manager, tmp_path):
    """The host points the client at another (real, provisioned) Keep's endpoint and cert."""
    decoy = ClientAgent()
    try:
        decoy.call(decoy.new_keep(NewKeep(backend="nil", manager=shared_manager.url,
                                          token_file=_token(shared_manager, tmp_path))))
        decoy_channel = decoy.call(decoy.current.ensure_channel())

        def redirect(method, path, body, status):
            if path.endswith("/provision") and status == 200:
                resp = p.ProvisionResponse.from_cbor(body)
                resp.endpoint = decoy_channel.url
                return resp.to_cbor(), status
            return body, status
        proxy = _attack(agent, shared_manager, tmp_path, redirect)
        try:
            with pytest.raises(KeepError, match="pinned certificate"):
                agent.call(agent.run("wasm", lambda e: None, module=MODULE))
        finally:
            agent.call(agent.close())
            proxy.close()
    finally:
        decoy.stop()


def _token(m, tmp_path):
    tf = tmp_path / "token2"
    tf.write_text(m.token + "\n")
    return str(tf)
