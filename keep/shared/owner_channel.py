"""The data owner's channel to a Keep: review requests, sealed, signed, relayed (issue 16).

The owner reviews the analyst's ``keep.release`` requests over their own attested channel to the
same Keep.  It needs no listener of its own and nothing from the analyst: each request is

* **signed** with the owner key whose fingerprint the owner's sealed dataset carries
  (Ed25519 or ECDSA P-256, as for sealing: :func:`~keepbook.keep.shared.dataset_format.
  verify_owner_signature`) over ``"keepbook/owner-request-sig/v1" ‖ SHA-256(request)``;
* **sealed** with HPKE to the Keep's long-lived dataset key — the key in the Keep's attested
  config, which the owner verified with a fresh nonce — with
  ``info = "keepbook/owner-request/v1"``; so only that Keep can read it;
* **bound** to that Keep: the request names the ``keep_id`` and the digest of the config the
  owner verified; another Keep refuses it (and cannot open it: its keys differ);
* **fresh**: a random ``nonce`` the Keep remembers — a replayed request is refused.

The Keep answers with a response signed by its audit key (also in the attested config) over
``"keepbook/owner-response-sig/v1" ‖ SHA-256(response)``, naming the request's digest, and
sealed with HPKE (X25519) to the one-use ``reply_key`` in the request, ``info =
"keepbook/owner-reply/v1" ‖ SHA-256(request)``: only that owner reads it, and it answers that
request and no other.  The host relays ciphertext (``owner_request`` / ``owner_reply`` in
:mod:`keepbook.keep.shared.protocol`) and learns that an owner asked something, and sizes.

Shared and sans-IO: keys come from the caller (the owner's signing key as a ``sign`` function,
the Keep's private keys in :mod:`keepbook.keep.inside.review`).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any, Callable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

from keepbook.keep.shared import dataset_format, protocol, sealing

REQUEST_FORMAT = "keepbook-owner-request/v1"
RESPONSE_FORMAT = "keepbook-owner-response/v1"
REQUEST_INFO = b"keepbook/owner-request/v1"
REPLY_INFO = b"keepbook/owner-reply/v1"
REQUEST_SIG_DOMAIN = b"keepbook/owner-request-sig/v1"
RESPONSE_SIG_DOMAIN = b"keepbook/owner-response-sig/v1"
#: the reply is sealed to the owner's one-use key with this suite
REPLY_SUITE = sealing.X25519_SUITE.name
OPS = ("list", "show", "decide")
DECISIONS = ("approve", "reject")
MAX_REASON = 500
MAX_REQUEST_BYTES = 16 * 1024
REQUEST_FIELDS = {"format": str, "keep_id": str, "config_digest": bytes, "nonce": bytes,
                  "t": (int, float), "op": str, "args": dict, "owner_alg": str,
                  "owner_key": bytes, "reply_key": bytes}


class OwnerChannelError(ValueError):
    """An owner request or response is refused; the message names the failing check."""


@dataclass(frozen=True)
class OwnerRequest:
    """A checked request: who (``owner`` fingerprint), what (``op``, ``args``), for which Keep."""

    raw: bytes
    keep_id: str
    config_digest: bytes
    nonce: bytes
    op: str
    args: dict
    owner: str
    reply_key: bytes

    @property
    def digest(self) -> bytes:
        return hashlib.sha256(self.raw).digest()


# ---------------------------------------------------------------------- the owner's side

def make_request(*, keep_id: str, config_digest: bytes, op: str, args: dict, owner_alg: str,
                 owner_key: bytes, reply_key: bytes, nonce: bytes, t: float) -> bytes:
    """The request's canonical bytes (checked as the Keep will check them)."""
    raw = protocol.dumps({"format": REQUEST_FORMAT, "keep_id": keep_id,
                          "config_digest": config_digest, "nonce": nonce, "t": t, "op": op,
                          "args": args, "owner_alg": owner_alg, "owner_key": owner_key,
                          "reply_key": reply_key})
    parse_request(raw)
    return raw


def seal_request(raw: bytes, sign: Callable[[bytes], bytes], suite: str, keep_key: bytes) -> bytes:
    """Sign ``raw`` with the owner's key (``sign``) and seal it to the Keep's dataset key."""
    envelope = protocol.dumps({"request": raw, "signature": sign(request_message(raw))})
    try:
        return sealing.seal(suite, keep_key, envelope, REQUEST_INFO)
    except sealing.SealingError as exc:
        raise OwnerChannelError(str(exc)) from None


def open_reply(sealed: bytes, reply_private: Any, request_raw: bytes,
               audit_key: bytes) -> dict[str, Any]:
    """The Keep's response to ``request_raw``: opened with the one-use key, its signature
    checked with the Keep's attested audit key, and bound to that request."""
    digest = hashlib.sha256(request_raw).digest()
    try:
        plain = sealing.open_sealed(REPLY_SUITE, reply_private, sealed, REPLY_INFO + digest)
    except sealing.SealingError:
        raise OwnerChannelError("the reply does not open with this request's one-use key: it "
                                "answers another request, or was altered in transit") from None
    outer = _map(plain, "reply", {"response": bytes, "signature": bytes})
    try:
        ed25519.Ed25519PublicKey.from_public_bytes(audit_key).verify(
            outer["signature"], RESPONSE_SIG_DOMAIN + hashlib.sha256(outer["response"]).digest())
    except (InvalidSignature, ValueError):
        raise OwnerChannelError("the reply's signature does not verify with the Keep's attested "
                                "audit key: it was not made by that Keep") from None
    resp = _map(outer["response"], "response", {"format": str, "keep_id": str, "request": bytes,
                                                "ok": bool, "content": dict, "reason": str})
    if resp["format"] != RESPONSE_FORMAT or resp["request"] != digest:
        raise OwnerChannelError("the reply answers another request")
    return resp


# ---------------------------------------------------------------------- the Keep's side

def request_message(raw: bytes) -> bytes:
    return REQUEST_SIG_DOMAIN + hashlib.sha256(raw).digest()


def parse_request(raw: bytes) -> OwnerRequest:
    """The request's fields, each checked (its signature is checked by :func:`open_request`)."""
    r = _map(raw, "request", REQUEST_FIELDS)
    if r["format"] != REQUEST_FORMAT:
        raise OwnerChannelError(f"not a {REQUEST_FORMAT} request")
    if not 0 < len(r["keep_id"]) <= 64 or not 32 <= len(r["nonce"]) <= 64 or \
            len(r["config_digest"]) != 48 or len(r["reply_key"]) != 32 or \
            not math.isfinite(float(r["t"])):
        raise OwnerChannelError("request: keep_id, nonce (32-64 bytes), config_digest (48 bytes) "
                                "or reply_key (32 bytes) has the wrong size")
    if r["op"] not in OPS:
        raise OwnerChannelError(f"request: op must be one of {', '.join(OPS)}")
    _check_args(r["op"], r["args"])
    return OwnerRequest(raw=raw, keep_id=r["keep_id"], config_digest=r["config_digest"],
                        nonce=r["nonce"], op=r["op"], args=r["args"],
                        owner=dataset_format.fingerprint(r["owner_alg"], r["owner_key"]),
                        reply_key=r["reply_key"])


def open_request(sealed: bytes, private_key: Any, suite: str) -> OwnerRequest:
    """Open a sealed request with the Keep's dataset key and check the owner's signature."""
    try:
        plain = sealing.open_sealed(suite, private_key, sealed, REQUEST_INFO)
    except sealing.SealingError:
        raise OwnerChannelError("the request does not open with this Keep's key: it was sealed "
                                "to another Keep, or altered in transit") from None
    outer = _map(plain, "envelope", {"request": bytes, "signature": bytes})
    raw = outer["request"]
    req = parse_request(raw)
    r = protocol.loads(raw)
    try:
        dataset_format.verify_owner_signature(r["owner_alg"], r["owner_key"], outer["signature"],
                                              request_message(raw))
    except dataset_format.DatasetError:
        raise OwnerChannelError("the owner's signature does not verify: the request was not "
                                "signed by the key it names") from None
    return req


def seal_reply(req: OwnerRequest, keep_id: str, ok: bool, content: dict, reason: str,
               sign: Callable[[bytes], bytes]) -> bytes:
    """The Keep's response to ``req``, signed with its audit key (``sign``), sealed to the
    request's one-use reply key."""
    response = protocol.dumps({"format": RESPONSE_FORMAT, "keep_id": keep_id,
                               "request": req.digest, "ok": ok, "content": content,
                               "reason": reason})
    envelope = protocol.dumps({"response": response, "signature": sign(
        RESPONSE_SIG_DOMAIN + hashlib.sha256(response).digest())})
    return sealing.seal(REPLY_SUITE, req.reply_key, envelope, REPLY_INFO + req.digest)


def value_digest(value: Any, note: str) -> str:
    """What an approval names: the released value and its note, exactly as the owner saw them."""
    return "sha256:" + hashlib.sha256(protocol.dumps({"value": value, "note": note})).hexdigest()


# ---------------------------------------------------------------------- helpers

def _check_args(op: str, args: dict) -> None:
    if op == "list":
        if args:
            raise OwnerChannelError("request: list takes no arguments")
        return
    rid = args.get("id")
    if isinstance(rid, bool) or not isinstance(rid, int) or not 0 < rid < 2**31:
        raise OwnerChannelError(f"request: {op} needs the request id (a positive integer)")
    if op == "show":
        if set(args) != {"id"}:
            raise OwnerChannelError("request: show takes only id")
        return
    if set(args) - {"id", "decision", "reason", "value_digest"}:
        raise OwnerChannelError("request: decide takes id, decision, reason and value_digest")
    if args.get("decision") not in DECISIONS:
        raise OwnerChannelError("request: decision must be \"approve\" or \"reject\"")
    reason = args.get("reason", "")
    if not isinstance(reason, str) or len(reason) > MAX_REASON:
        raise OwnerChannelError(f"request: reason must be text of at most {MAX_REASON} characters")
    if args["decision"] == "reject" and not reason.strip():
        raise OwnerChannelError("request: a rejection needs a reason (the analyst sees it)")
    digest = args.get("value_digest")
    if not isinstance(digest, str) or not digest.startswith("sha256:") or len(digest) != 71:
        raise OwnerChannelError("request: decide needs the value_digest of what you reviewed "
                                "(`show` gives it)")


def _map(raw: bytes, what: str, fields: dict[str, Any]) -> dict[str, Any]:
    try:
        m = protocol.loads(raw, max_bytes=protocol.MAX_CONTROL_BYTES)
    except protocol.ProtocolError as exc:
        raise OwnerChannelError(f"{what}: {exc.reason}") from None
    if not isinstance(m, dict) or set(m) != set(fields):
        raise OwnerChannelError(f"{what}: expected exactly the fields {', '.join(sorted(fields))}")
    for k, t in fields.items():
        if isinstance(m[k], bool) and t is not bool:
            raise OwnerChannelError(f"{what}: field {k!r} has the wrong type")
        if not isinstance(m[k], t):
            raise OwnerChannelError(f"{what}: field {k!r} has the wrong type")
    return m
