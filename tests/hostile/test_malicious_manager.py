"""A malicious keep manager, one attack at a time — the attacks tests/host/test_handshake_tampering.py
does not cover: dropped and reordered messages, answers replayed from another Keep, a request
sent to the Keep twice, and the host connecting to the Keep's endpoint itself.

Each attack must be detected before any cell, module, dataset or key leaves the client, with
the failing check named; the direct connection must be refused."""

from __future__ import annotations

import http.client
import ssl
import tempfile
import time
from pathlib import Path

import pytest
import wasmtime
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from keepbook.keep.shared import protocol as p
from keepbook.kernel.agent import ClientAgent, NewKeep
from keepbook.keep.shared.certificates import self_signed as _self_signed
from keepbook.kernel.client import AttestationRefused, KeepError
from tests.conftest import HELLO_WAT
from tests.hostile.hostile_manager import HostileManager
from tests.hostile.report import record

MODULE = bytes(wasmtime.wat2wasm(HELLO_WAT))


@pytest.fixture(scope="module")
def agent():
    a = ClientAgent()
    yield a
    a.stop()


@pytest.fixture
def hostile(agent, mgr, token_file):
    """hostile(**kw) → a HostileManager in front of the real one, with a Keep created through it."""
    made: list[HostileManager] = []

    def make(hook=None, request_hook=None, *, backend="sim-snp", create=True, **kw) -> HostileManager:
        proxy = HostileManager(mgr.url, hook, request_hook, **kw)
        made.append(proxy)
        if create:
            agent.call(agent.new_keep(NewKeep(backend=backend, manager=proxy.url, token_file=token_file)))
        return proxy
    yield make
    try:
        if agent.current is not None:
            agent.call(agent.close(), timeout=10)
    except Exception:
        pass
    for proxy in made:
        proxy.close()


def nothing_left(proxy: HostileManager, *, provisioned: bool = False) -> None:
    """No cell/module left the client; before a verified attestation, no sealed key either."""
    sent = b"".join(proxy.relayed)
    assert MODULE not in sent
    if not provisioned:
        assert not any(path.endswith("/provision") for _, path, _ in proxy.requests), [path for _, path, _ in proxy.requests]


def run_cell(agent) -> dict:
    return agent.call(agent.run("wasm", lambda e: None, module=MODULE), timeout=30)


def on(path_end: str, replace):
    def hook(method, path, body, status):
        if path.endswith(path_end):
            return replace(body, status)
        return body, status
    return hook


def fake_provision_response() -> bytes:
    from keepbook.keep.shared.certificates import self_signed as one_use_certificate
    return p.ProvisionResponse(endpoint="https://127.0.0.1:9",
                               server_cert=one_use_certificate(ec.generate_private_key(ec.SECP256R1()),
                                                               "host")).to_cbor()


# ---------------------------------------------------------------- reordered and doubled answers


def test_provision_answer_given_before_attestation(agent, hostile):
    """The host answers the attest request with a provisioning answer (skips attestation)."""
    proxy = hostile(on("/attest", lambda body, status: (fake_provision_response(), 200)))
    with pytest.raises(KeepError, match="breaks the protocol: expected message 'attest_response', "
                                        "got 'provision_response'"):
        run_cell(agent)
    nothing_left(proxy)
    record("attack", "provision answered before attest")


def test_attest_answer_given_to_provision(agent, hostile):
    """Reordered the other way: the provision request is answered with (fresh) evidence."""
    answers: list[bytes] = []

    def swap(method, path, body, status):
        if path.endswith("/attest"):
            answers.append(body)
        if path.endswith("/provision"):
            return answers[-1], 200
        return body, status
    proxy = hostile(swap)
    with pytest.raises(KeepError, match="expected message 'provision_response', got 'attest_response'"):
        run_cell(agent)
    nothing_left(proxy, provisioned=True)
    record("attack", "attest answer given to provision")


def test_attest_answered_twice_in_one_body(agent, hostile):
    """Two attest answers concatenated: strict decoding refuses the trailing second one."""
    proxy = hostile(on("/attest", lambda body, status: (body + body, status)))
    with pytest.raises(KeepError, match="trailing data"):
        run_cell(agent)
    nothing_left(proxy)
    record("attack", "attest answered twice in one body")


def test_attest_sent_to_the_keep_twice(agent, hostile):
    """The host asks the Keep for evidence twice and gives the client the first (genuine) answer.
    The Keep keeps its recent attestation keys (several parties attest one Keep), so the sealed
    channel key opens with the one the client's verified evidence binds: the cell runs, and the
    host has learned nothing — what it relays on the channel is TLS to the client's own key."""
    proxy = hostile(repeat=lambda method, path: 1 if path.endswith("/attest") else 0)
    status = run_cell(agent)
    assert status.get("ok") is True
    assert sum(1 for _, path, _ in proxy.requests if path.endswith("/attest")) == 1
    nothing_left(proxy, provisioned=True)
    record("attack", "attest forwarded twice (the client's attestation still provisions)")


def test_attest_answers_swapped_between_two_keeps(agent, hostile, token_file):
    """Two Keeps of one user, same config: the host answers the second Keep's attest with the
    first Keep's evidence (recorded a moment before).  The nonce gives it away."""
    answers: list[bytes] = []

    def swap(method, path, body, status):
        if path.endswith("/attest"):
            if answers:
                return answers[0], status
            answers.append(body)
        return body, status
    proxy = hostile(swap)
    first = agent.current
    agent.call(first.attest())                      # genuine; the host records it
    agent.call(agent.new_keep(NewKeep(backend="sim-snp", manager=proxy.url, token_file=token_file)))
    try:
        with pytest.raises(AttestationRefused) as exc:
            run_cell(agent)
        assert "freshness" in [c.name for c in exc.value.result.vector.failures]
        assert not any(path.endswith("/provision") for _, path, _ in proxy.requests)
        assert MODULE not in b"".join(proxy.relayed)
    finally:
        agent.call(agent.close(first.id))
    record("attack", "attest answers swapped between Keeps")


def test_provision_response_replayed_from_another_keep(agent, hostile, mgr, token_file):
    """The host answers our provisioning with a genuine provisioning answer of another Keep."""
    decoy = ClientAgent()
    try:
        recorder = HostileManager(mgr.url)
        try:
            decoy.call(decoy.new_keep(NewKeep(backend="nil", manager=recorder.url, token_file=token_file)))
            decoy.call(decoy.current.ensure_channel())
            theirs = next(body for (_, path, _), body in zip(recorder.requests, recorder.relayed[1::2])
                          if path.endswith("/provision"))
        finally:
            recorder.close()
        proxy = hostile(on("/provision", lambda body, status: (theirs, 200)))
        with pytest.raises(KeepError, match="substituted"):
            run_cell(agent)
        nothing_left(proxy, provisioned=True)
    finally:
        decoy.stop()
    record("attack", "provision response replayed from another Keep")


def test_error_body_with_success_status(agent, hostile):
    bad = p.ErrorBody(status=200, reason="all good").to_cbor()
    proxy = hostile(on("/attest", lambda body, status: (bad, 200)))
    with pytest.raises(KeepError, match="breaks the protocol"):
        run_cell(agent)
    nothing_left(proxy)
    record("attack", "error body sent as success")


# ---------------------------------------------------------------- dropped messages


@pytest.mark.parametrize("step", ["/attest", "/provision"])
def test_dropped_answer_is_a_clear_error(agent, hostile, step):
    proxy = hostile(drop=lambda method, path: path.endswith(step))
    started = time.monotonic()
    with pytest.raises(KeepError, match="keep manager"):
        run_cell(agent)
    assert time.monotonic() - started < 5
    nothing_left(proxy, provisioned=step == "/provision")
    record("attack", f"{step[1:]} answer dropped")


def test_dropped_create_leaves_no_session(agent, hostile, token_file):
    proxy = hostile(create=False, drop=lambda method, path: path == "/v1/keeps" and method == "POST")
    before = dict(agent.sessions)
    with pytest.raises(KeepError, match="keep manager"):
        agent.call(agent.new_keep(NewKeep(backend="nil", manager=proxy.url, token_file=token_file)))
    assert agent.sessions == before
    record("attack", "create answer dropped")


def test_empty_answer_to_attest(agent, hostile):
    proxy = hostile(on("/attest", lambda body, status: (b"", 200)))
    with pytest.raises(KeepError, match="empty body"):
        run_cell(agent)
    nothing_left(proxy)
    record("attack", "empty attest answer")


# ---------------------------------------------------------------- the host calls the Keep itself


def _https(endpoint: str, server_cert: bytes, client: tuple[bytes, bytes] | None,
           body: bytes = p.Request(op="status").to_cbor(), ctx: ssl.SSLContext | None = None) -> int | str:
    """POST /v1/request as the host would; return the HTTP status or the error that ended it."""
    if ctx is not None:
        client = None
    ctx = ctx or ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cadata=server_cert)    # the host knows the public server cert
    if client is not None:
        with tempfile.TemporaryDirectory() as tmp:
            kp, cp = Path(tmp) / "k.pem", Path(tmp) / "c.pem"
            kp.write_bytes(client[0])
            cp.write_bytes(client[1])
            ctx.load_cert_chain(cp, kp)
    host, port = endpoint.removeprefix("https://").rsplit(":", 1)
    conn = http.client.HTTPSConnection(host, int(port), context=ctx, timeout=5)
    try:
        conn.request("POST", "/v1/request", body=body, headers={"Content-Type": p.CBOR})
        return conn.getresponse().status
    except (ssl.SSLError, ConnectionError, http.client.HTTPException, OSError) as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        conn.close()


def _self_signed_pem(cn: str) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = x509.load_der_x509_certificate(_self_signed(key, cn))
    return (key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()),
            cert.public_bytes(serialization.Encoding.PEM))


def test_host_cannot_use_the_keep_endpoint_itself(agent, hostile):
    """The host knows the endpoint and the server certificate (it relayed both); without the
    client key sealed to the Keep every connection is refused — and the Keep stays the user's."""
    proxy = hostile(backend="nil")
    events: list = []
    agent.call(agent.run("wasm", events.append, module=MODULE))
    relayed = p.ProvisionResponse.from_cbor(
        next(body for (_, path, _), body in zip(proxy.requests, proxy.relayed[1::2])
             if path.endswith("/provision")))
    attempts = {
        "no client certificate": None,
        "another self-signed client certificate": _self_signed_pem("keepbook client 0000"),
        "the host's own CA-style certificate": _self_signed_pem("keepbook Keep host"),
    }
    # control: the same request with the user's own TLS context is answered
    assert _https(relayed.endpoint, relayed.server_cert, None, ctx=agent.current.channel.context) == 200
    for name, client in attempts.items():
        got = _https(relayed.endpoint, relayed.server_cert, client)
        assert got != 200, (name, got)
        assert isinstance(got, str) or got == 403, (name, got)
        record("refused", f"direct connection: {name}")
    # plain HTTP to the TLS port
    host, port = relayed.endpoint.removeprefix("https://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        conn.request("POST", "/v1/request", body=p.Request(op="status").to_cbor())
        status = conn.getresponse().status
    except (ConnectionError, http.client.HTTPException, OSError):
        status = None
    assert status != 200
    record("refused", "direct connection: plain HTTP")
    # the user's channel still works, and nothing the host relayed holds the module
    events.clear()
    agent.call(agent.run("wasm", events.append, module=MODULE))
    assert "hello from the Keep" in "".join(e.content.get("text", "") for e in events)
    assert MODULE not in b"".join(proxy.relayed)


def test_host_replays_the_sealed_provisioning(agent, hostile, mgr):
    """The host keeps the client's sealed provisioning message and sends it to the Keep again
    (to re-open the channel with keys it hopes to learn, or to reset it): a Keep is provisioned
    once; the replay is refused with 409 and the user's channel keeps working."""
    from tests.support.http import http

    proxy = hostile(backend="nil")
    run_cell(agent)
    kid = agent.current.id
    sealed = next(body for _, path, body in proxy.requests if path.endswith("/provision"))
    status, body = http("POST", f"{mgr.url}/v1/keeps/{kid}/provision", sealed, token=mgr.token)
    assert status == 409 and "one-use" in p.ErrorBody.from_cbor(body).reason
    events: list = []
    agent.call(agent.run("wasm", events.append, module=MODULE))
    assert "hello from the Keep" in "".join(e.content.get("text", "") for e in events)
    record("attack", "sealed provisioning replayed to the Keep")
