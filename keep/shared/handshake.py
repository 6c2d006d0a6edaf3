"""The attestation handshake of one Keep, as one state machine every side runs (h11's way).

The client, the keep manager and the Keep each hold a :class:`Handshake` for a Keep and feed it
the messages they send and receive (:meth:`Handshake.send`, :meth:`Handshake.receive`).  The
states and the moves between them are one table, :data:`TRANSITIONS`; a move the table does not
allow raises :class:`~keepbook.keep.shared.protocol.LocalProtocolError` (this side was about to
break the protocol) or :class:`~keepbook.keep.shared.protocol.RemoteProtocolError` (the peer
did), naming the state and the message.  No sockets, no clocks: tests drive it directly.

The path of one Keep::

    NEW ─start→ STARTING ─started→ READY ─attest→ ATTESTING ─attest_response→ ATTESTED
    ATTESTED ─attest→ ATTESTING          (fresh evidence, a fresh key: only the latest counts)
    ATTESTED ─verified→ VERIFIED         (the client only: its verifier accepted the evidence)
    VERIFIED ─provision→ PROVISIONING    (the client may seal its channel key only now)
    ATTESTED ─provision→ PROVISIONING    (the manager and the Keep cannot know about VERIFIED)
    PROVISIONING ─provision_response→ PROVISIONED   (the attested channel is open, once)
    PROVISIONED ─attest→ REATTESTING ─attest_response→ PROVISIONED   (fresh evidence of a
        running Keep; the client passes through REATTESTED and must verify it again to go on
        using the channel — a Keep that fails a re-attestation is failed for the client)
    any state ─close→ CLOSED;  any state ─fail→ FAILED

An ``error`` answer to a request leaves the Keep where it was before the request (a refused
provisioning leaves it ATTESTED), except while STARTING, where it means the Keep never started.

A data owner's sealed review request (``owner_request`` → ``owner_reply``, the owner channel of
:mod:`keepbook.keep.shared.owner_channel`) is not a move: it changes no state, and may be
relayed only to a started Keep that is not waiting for an answer (:data:`OWNER_STATES`,
:meth:`Handshake.require_owner_channel`); the owner's own client sends one only after its
verifier accepted the Keep's evidence (VERIFIED), as for provisioning.

Which message is which move: ``create_keep`` (client → manager) and ``start`` (manager → Keep)
are ``start``; ``keep_info`` (manager → client) and ``reply`` (Keep → manager) answering them are
``started``; ``attest``/``attest_response``, ``provision``/``provision_response`` and ``error``
are themselves.  Requests flow from the client towards the Keep and answers back: the Keep never
sends a request, the client never sends an answer, and the manager relays both ways.
"""

from __future__ import annotations

from enum import Enum
from typing import Iterable

from keepbook.keep.shared import protocol
from keepbook.keep.shared.protocol import LocalProtocolError, RemoteProtocolError


class Role(str, Enum):
    CLIENT = "client"     # the user's machine: sends requests, verifies, provisions
    MANAGER = "manager"   # the untrusted host: relays requests one way, answers the other
    KEEP = "keep"         # the wasmldr inside the Keep: receives requests, answers them


class State(str, Enum):
    NEW = "new"
    STARTING = "starting"
    READY = "ready"
    ATTESTING = "attesting"
    ATTESTED = "attested"
    VERIFIED = "verified"
    PROVISIONING = "provisioning"
    PROVISIONED = "provisioned"
    REATTESTING = "reattesting"
    REATTESTED = "reattested"
    CLOSED = "closed"
    FAILED = "failed"

    @property
    def terminal(self) -> bool:
        return self in (State.CLOSED, State.FAILED)


S = State
C, M, K = Role.CLIENT, Role.MANAGER, Role.KEEP


def _every_role(state: State) -> dict[Role, State]:
    return {role: state for role in Role}


#: (state, move) → {role: next state}; a role missing from a row may not make that move there.
#: ``error`` is handled by :meth:`Handshake._error` (it returns to the state before the
#: request), ``close`` and ``fail`` by :meth:`Handshake.close` and :meth:`Handshake.fail`.
TRANSITIONS: dict[tuple[State, str], dict[Role, State]] = {
    (S.NEW, "start"): _every_role(S.STARTING),
    (S.STARTING, "started"): _every_role(S.READY),
    (S.READY, "attest"): _every_role(S.ATTESTING),
    (S.ATTESTED, "attest"): _every_role(S.ATTESTING),
    (S.VERIFIED, "attest"): {C: S.ATTESTING},
    (S.ATTESTING, "attest_response"): _every_role(S.ATTESTED),
    (S.ATTESTED, "verified"): {C: S.VERIFIED},
    (S.VERIFIED, "provision"): {C: S.PROVISIONING},
    (S.ATTESTED, "provision"): {M: S.PROVISIONING, K: S.PROVISIONING},
    (S.PROVISIONING, "provision_response"): _every_role(S.PROVISIONED),
    (S.PROVISIONED, "attest"): _every_role(S.REATTESTING),
    (S.REATTESTED, "attest"): {C: S.REATTESTING},
    (S.REATTESTING, "attest_response"): {C: S.REATTESTED, M: S.PROVISIONED, K: S.PROVISIONED},
    (S.REATTESTED, "verified"): {C: S.PROVISIONED},
}

#: what to do about the refusals people (and hostile hosts) run into
HINTS: dict[tuple[State, str], str] = {
    (S.NEW, "attest"): "the Keep has not started",
    (S.NEW, "provision"): "the Keep has not started",
    (S.READY, "provision"): "ask for evidence (attest) first",
    (S.ATTESTED, "provision"): "the Keep's evidence has not verified under your trust policy; "
                               "nothing may be sealed to it",
    (S.REATTESTED, "provision"): "the Keep is already provisioned",
    (S.PROVISIONED, "provision"): "a Keep's channel key is one-use: create a new Keep",
    (S.PROVISIONED, "start"): "the Keep is already started",
    (S.READY, "start"): "the Keep is already started",
    (S.ATTESTED, "start"): "the Keep is already started",
}

#: where an owner request may go, by role: the owner's client only after verifying the evidence,
#: the manager and the Keep once the Keep started and while no request waits for its answer
OWNER_STATES: dict[Role, tuple[State, ...]] = {
    C: (S.VERIFIED, S.PROVISIONED),
    M: (S.READY, S.ATTESTED, S.PROVISIONED),
    K: (S.READY, S.ATTESTED, S.PROVISIONED),
}

REQUESTS = frozenset({"start", "attest", "provision"})
ANSWERS = frozenset({"started", "attest_response", "provision_response", "error"})
#: what each waiting state waits for, to say so when something else arrives
_WAITING_FOR = {S.STARTING: "the answer to start", S.ATTESTING: "the attestation answer",
                S.PROVISIONING: "the provisioning answer", S.REATTESTING: "the attestation answer"}
#: the public name of a state on the wire (``keep_info.state``): a request in flight does not
#: change what the Keep is
PUBLIC = {S.NEW: "starting", S.STARTING: "starting", S.READY: "ready", S.ATTESTING: "attested",
          S.ATTESTED: "attested", S.VERIFIED: "attested", S.PROVISIONING: "attested",
          S.PROVISIONED: "provisioned", S.REATTESTING: "provisioned", S.REATTESTED: "provisioned",
          S.CLOSED: "closed", S.FAILED: "failed"}


def move_of(message: protocol.Message) -> str:
    """The handshake move a message makes (its name for most; see the module docstring)."""
    if isinstance(message, (protocol.CreateKeep, protocol.Start)):
        return "start"
    if isinstance(message, (protocol.KeepInfo, protocol.Reply)):
        return "started"
    if isinstance(message, protocol.ErrorBody):
        return "error"
    if isinstance(message, (protocol.AttestRequest, protocol.AttestResponse,
                            protocol.ProvisionRequest, protocol.ProvisionResponse)):
        return {"attest": "attest", "attest_response": "attest_response",
                "provision": "provision", "provision_response": "provision_response"}[message.MSG]
    raise LocalProtocolError(f"{message.MSG!r} is not a handshake message", 500)


class Handshake:
    """One Keep's handshake as ``role`` sees it.  Not thread-safe: one owner feeds it."""

    def __init__(self, role: Role, state: State = State.NEW):
        self.role = Role(role)
        self.state = state
        self._before: State | None = None   # where an error answer returns to
        self.reason: str | None = None      # why the Keep closed or failed

    # -- what the side may do
    def send(self, message: protocol.Message) -> State:
        """This side is about to send ``message``: allowed?  (LocalProtocolError if not.)"""
        return self._move(move_of(message), message.MSG, local=True)

    def receive(self, message: protocol.Message) -> State:
        """This side received ``message``: allowed?  (RemoteProtocolError if not.)"""
        return self._move(move_of(message), message.MSG, local=False)

    def verified(self) -> State:
        """The client's verifier accepted the latest evidence under the user's policy."""
        return self._move("verified", "verification", local=True)

    def abandon(self) -> State:
        """This side gave up waiting for an answer (the connection failed, or it timed out):
        back to where it was before the request, as if the answer had been an error."""
        if self.state in _WAITING_FOR:
            self._error("(no answer)", LocalProtocolError)
        return self.state

    def close(self, reason: str = "closed") -> State:
        if not self.state.terminal:
            self.state, self.reason = State.CLOSED, reason
        return self.state

    def fail(self, reason: str) -> State:
        if self.state is not State.CLOSED:
            self.state, self.reason = State.FAILED, reason
        return self.state

    # -- questions
    @property
    def public_state(self) -> str:
        return PUBLIC[self.state]

    @property
    def channel_open(self) -> bool:
        """Provisioned, and (for the client) every attestation since verified."""
        return self.state in (State.PROVISIONED, State.REATTESTING)

    def require(self, states: Iterable[State], doing: str) -> None:
        """This side wants to do something only allowed in ``states`` (the attested channel's
        requests need PROVISIONED): LocalProtocolError naming the state otherwise."""
        allowed = tuple(states)
        if self.state not in allowed:
            raise LocalProtocolError(
                f"cannot {doing} while the Keep is {self.state.value}"
                f"{self._why()} (needs {' or '.join(s.value for s in allowed)})", 409)

    def require_owner_channel(self) -> None:
        """A data owner's request may travel now (:data:`OWNER_STATES`)?  LocalProtocolError
        naming the state otherwise (for the client: 'verify the evidence first')."""
        self.require(OWNER_STATES[self.role], "relay a data owner's review request")

    # -- the table
    def _move(self, move: str, what: str, *, local: bool) -> State:
        error = LocalProtocolError if local else RemoteProtocolError
        if self.state.terminal:
            raise error(f"{what!r} after the Keep was {self.state.value}{self._why()}", 409)
        self._check_direction(move, what, local, error)
        if move == "error":
            return self._error(what, error)
        row = TRANSITIONS.get((self.state, move), {})
        if self.role not in row:
            waiting = _WAITING_FOR.get(self.state)
            hint = (f"; waiting for {waiting}" if waiting else
                    f": {HINTS[(self.state, move)]}" if (self.state, move) in HINTS else "")
            raise error(f"{what!r} is not allowed while the Keep is {self.state.value}{hint}", 409)
        if move in REQUESTS:
            self._before = self.state
        self.state = row[self.role]
        return self.state

    def _error(self, what: str, error: type[protocol.ProtocolError]) -> State:
        if self.state not in _WAITING_FOR:
            raise error(f"{what!r} while no request was waiting (Keep {self.state.value})", 409)
        if self.state is State.STARTING:
            self.state, self.reason = State.FAILED, "the Keep did not start"
        else:
            assert self._before is not None
            self.state = self._before
        return self.state

    def _check_direction(self, move: str, what: str, local: bool,
                         error: type[protocol.ProtocolError]) -> None:
        if self.role is Role.MANAGER or move == "verified":
            return  # the manager relays both ways
        sends_requests = self.role is Role.CLIENT
        if move in REQUESTS and local != sends_requests:
            who = "the client" if self.role is Role.CLIENT else "the Keep"
            raise error(f"{what!r} is a request, which {who} never "
                        f"{'receives' if self.role is Role.CLIENT else 'sends'}", 409)
        if move in ANSWERS and local == sends_requests:
            who = "the client" if self.role is Role.CLIENT else "the Keep"
            raise error(f"{what!r} is an answer, which {who} never "
                        f"{'sends' if self.role is Role.CLIENT else 'receives'}", 409)

    def _why(self) -> str:
        return f" ({self.reason})" if self.reason else ""

    def __repr__(self) -> str:
        return f"<Handshake {self.role.value} {self.state.value}>"
