"""The handshake state machine, driven directly (no sockets), and the Keep's own copy of it
driven through a real wasmldr's control pipe."""

from __future__ import annotations

import os

import pytest

from keepbook.keep.shared import protocol as p
from keepbook.keep.shared.handshake import (PUBLIC, TRANSITIONS, Handshake, Role, State,
                                            move_of)

INFO = p.KeepInfo(id="k1", backend="nil", profile="staging", state="ready", created=0.0)
START = p.Start(config=b"", keep_id="k1")
ATTEST = p.AttestRequest(nonce=bytes(32))
ATTESTED = p.AttestResponse(evidence_kind="nil", evidence=b"x", certs=[], hpke_suite="s",
                            hpke_public_key=bytes(32), config=b"", nonce=bytes(32))
PROVISION = p.ProvisionRequest(sealed=bytes(32))
PROVISIONED = p.ProvisionResponse(endpoint="https://127.0.0.1:1", server_cert=b"c")
ERROR = p.ErrorBody(status=400, reason="no")


def client_at(state: State) -> Handshake:
    """A client handshake walked to ``state`` by legal moves."""
    h = Handshake(Role.CLIENT)
    path = [("send", p.CreateKeep(backend="nil")), ("receive", INFO), ("send", ATTEST),
            ("receive", ATTESTED), ("verified", None), ("send", PROVISION), ("receive", PROVISIONED)]
    for how, msg in path:
        if h.state is state:
            break
        h.verified() if how == "verified" else getattr(h, how)(msg)
    assert h.state is state
    return h


def keep_at(state: State) -> Handshake:
    h = Handshake(Role.KEEP)
    path = [("receive", START), ("send", p.Reply(ok=True, content={})), ("receive", ATTEST),
            ("send", ATTESTED), ("receive", PROVISION), ("send", PROVISIONED)]
    for how, msg in path:
        if h.state is state:
            break
        getattr(h, how)(msg)
    assert h.state is state
    return h


def test_the_happy_path_for_each_role():
    assert client_at(State.PROVISIONED).channel_open
    assert keep_at(State.PROVISIONED).channel_open
    m = Handshake(Role.MANAGER)
    for msg in (START, p.Reply(ok=True, content={}), ATTEST, ATTESTED, PROVISION, PROVISIONED):
        m.receive(msg)
    assert m.state is State.PROVISIONED and m.public_state == "provisioned"


def test_the_client_cannot_provision_before_its_verifier_accepted():
    """Invariant 1 as a state: nothing is sealed to a Keep whose evidence did not verify."""
    h = client_at(State.ATTESTED)
    with pytest.raises(p.LocalProtocolError) as e:
        h.send(PROVISION)
    assert "attested" in e.value.reason and "not verified" in e.value.reason
    assert h.state is State.ATTESTED  # a refused move changes nothing


@pytest.mark.parametrize("state,msg,words", [
    (State.READY, PROVISION, "ask for evidence (attest) first"),
    (State.PROVISIONED, PROVISION, "one-use"),
    (State.NEW, ATTEST, "has not started"),
    (State.PROVISIONED, START, "already started"),
])
def test_the_keep_refuses_illegal_moves_naming_state_and_message(state, msg, words):
    h = keep_at(state)
    with pytest.raises(p.RemoteProtocolError) as e:
        h.receive(msg)
    assert repr(msg.MSG) in e.value.reason and state.value in e.value.reason and words in e.value.reason
    assert e.value.status == 409 and h.state is state


def test_direction_is_checked():
    """The Keep never sends a request and never receives an answer; the client the reverse."""
    with pytest.raises(p.LocalProtocolError, match="request"):
        keep_at(State.READY).send(ATTEST)
    with pytest.raises(p.RemoteProtocolError, match="answer"):
        keep_at(State.ATTESTING).receive(ATTESTED)
    with pytest.raises(p.RemoteProtocolError, match="request"):
        client_at(State.READY).receive(ATTEST)
    with pytest.raises(p.LocalProtocolError, match="answer"):
        client_at(State.ATTESTING).send(ATTESTED)


def test_an_answer_that_nobody_asked_for_is_refused():
    h = client_at(State.READY)
    with pytest.raises(p.RemoteProtocolError, match="not allowed while the Keep is ready"):
        h.receive(ATTESTED)
    h = client_at(State.ATTESTING)
    with pytest.raises(p.RemoteProtocolError, match="waiting for the attestation answer"):
        h.receive(PROVISIONED)


def test_an_error_answer_returns_to_before_the_request():
    h = client_at(State.VERIFIED)
    h.send(PROVISION)
    h.receive(ERROR)
    assert h.state is State.VERIFIED
    k = keep_at(State.ATTESTED)
    k.receive(PROVISION)
    k.send(ERROR)
    assert k.state is State.ATTESTED  # a bad ciphertext does not burn the attestation
    s = Handshake(Role.KEEP)
    s.receive(START)
    s.send(ERROR)
    assert s.state is State.FAILED and s.public_state == "failed"
    with pytest.raises(p.RemoteProtocolError, match="failed"):
        s.receive(ATTEST)


def test_abandon_and_close_and_fail():
    h = client_at(State.ATTESTING)
    h.abandon()
    assert h.state is State.READY
    h.close("closed by client")
    assert h.state is State.CLOSED and h.public_state == "closed"
    h.fail("too late")
    assert h.state is State.CLOSED  # closed stays closed
    with pytest.raises(p.LocalProtocolError, match="closed by client"):
        h.send(ATTEST)


def test_reattesting_a_running_keep_needs_a_new_verification_on_the_client():
    h = client_at(State.PROVISIONED)
    h.send(ATTEST)
    assert h.channel_open  # the channel stays usable while fresh evidence is on its way
    h.receive(ATTESTED)
    assert h.state is State.REATTESTED and not h.channel_open
    with pytest.raises(p.LocalProtocolError, match="needs provisioned"):
        h.require([State.PROVISIONED], "run a cell")
    h.verified()
    assert h.state is State.PROVISIONED and h.channel_open
    k = keep_at(State.PROVISIONED)
    k.receive(ATTEST)
    k.send(ATTESTED)
    assert k.state is State.PROVISIONED


def test_every_state_has_a_public_name_and_every_row_is_reachable_from_new():
    assert set(PUBLIC) == set(State)
    assert set(PUBLIC.values()) == set(p.KEEP_STATES)
    reachable = {State.NEW}
    frontier = [State.NEW]
    while frontier:
        s = frontier.pop()
        for (src, _), rows in TRANSITIONS.items():
            if src is s:
                for nxt in rows.values():
                    if nxt not in reachable:
                        reachable.add(nxt)
                        frontier.append(nxt)
    assert reachable | {State.CLOSED, State.FAILED} == set(State)


def test_only_handshake_messages_are_moves():
    with pytest.raises(p.LocalProtocolError):
        move_of(p.Lifecycle(event="booted"))


@pytest.mark.slow
def test_a_real_keep_refuses_a_replayed_provisioning_itself():
    """A hostile host relays the sealed provisioning a second time, straight into the Keep's
    control pipe (no honest keep manager in between): the Keep's own state machine refuses."""
    from tests.hostile.pipes import PipeKeep

    keep = PipeKeep("nil")
    try:
        keep.send(p.Start(keep_id="pipe", config=p.dumps({
            "backend": "nil", "profile": "staging", "policy": b"",
            "limits": dict(p.DEFAULT_LIMITS)})).to_cbor())
        assert isinstance(keep.read(), p.Reply)
        keep.send(p.ProvisionRequest(sealed=os.urandom(64)).to_cbor())
        early = keep.read()
        assert isinstance(early, p.ErrorBody) and "ask for evidence (attest) first" in early.reason
        keep.send(p.Start(keep_id="again", config=b"\xa0").to_cbor())
        again = keep.read()
        assert isinstance(again, p.ErrorBody) and "already started" in again.reason
    finally:
        keep.close()


def test_owner_requests_need_a_started_keep_and_a_verified_one_for_the_client() -> None:
    """The owner channel is not a move: it changes no state, goes only to a started Keep not
    waiting for an answer, and the owner's client sends only after verifying the evidence."""
    from keepbook.keep.shared.handshake import Handshake, Role, State
    from keepbook.keep.shared.protocol import LocalProtocolError

    for role in Role:
        with pytest.raises(LocalProtocolError, match="relay a data owner's review request"):
            Handshake(role, State.NEW).require_owner_channel()
        with pytest.raises(LocalProtocolError):
            Handshake(role, State.ATTESTING).require_owner_channel()
    Handshake(Role.KEEP, State.PROVISIONED).require_owner_channel()
    Handshake(Role.MANAGER, State.READY).require_owner_channel()
    with pytest.raises(LocalProtocolError, match="needs verified or provisioned"):
        Handshake(Role.CLIENT, State.ATTESTED).require_owner_channel()
    hs = Handshake(Role.CLIENT, State.VERIFIED)
    hs.require_owner_channel()
    assert hs.state is State.VERIFIED
