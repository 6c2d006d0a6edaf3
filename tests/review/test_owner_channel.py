"""The owner channel and the review queue (keep/shared/owner_channel.py, keep/inside/review.py),
without processes: a release reaches the analyst only after every owner approved; a forged,
replayed or misdirected decision is refused with its reason, and decides nothing."""

from __future__ import annotations

import os
import time

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from keepbook.keep.inside import dataset_opener, review
from keepbook.keep.inside.review import DatasetRef, ReviewQueue
from keepbook.keep.shared import dataset_format, owner_channel, protocol, sealing
from keepbook.kernel import dataset_sealer

SUITE = sealing.DEFAULT_SUITE
CONFIG = b"\x07" * 48


class Keep:
    """One Keep's keys and review queue."""

    def __init__(self, keep_id: str = "k1"):
        self.id = keep_id
        self.keys = dataset_opener.keep_dataset_keys((SUITE,))
        self.audit_key = ed25519.Ed25519PrivateKey.generate()
        self.log: list[tuple[str, dict]] = []
        self.queue = ReviewQueue(keep_id, CONFIG, self.keys, self.audit_key.sign,
                                 lambda k, e: self.log.append((k, e)))

    @property
    def public(self) -> bytes:
        return self.keys[SUITE][1]

    @property
    def audit_public(self) -> bytes:
        return self.audit_key.public_key().public_bytes_raw()


def fingerprint(key) -> str:
    return dataset_format.fingerprint(*dataset_sealer.owner_public(key))


def sealed(keep: Keep, key, op: str, args: dict | None = None, *, keep_id: str | None = None,
           config: bytes = CONFIG, nonce: bytes | None = None, signer=None):
    """(wire message, request bytes, reply private key) as the owner's client makes them."""
    reply_priv, reply_pub = sealing.generate(owner_channel.REPLY_SUITE)
    alg, pub = dataset_sealer.owner_public(key)
    raw = owner_channel.make_request(keep_id=keep_id or keep.id, config_digest=config, op=op,
                                     args=args or {}, owner_alg=alg, owner_key=pub,
                                     reply_key=reply_pub, nonce=nonce or os.urandom(32), t=time.time())
    signer = signer or key
    msg = owner_channel.seal_request(raw, lambda m: dataset_sealer.sign(signer, m), SUITE, keep.public)
    return protocol.OwnerRequest(suite=SUITE, sealed=msg), raw, reply_priv


def ask(keep: Keep, key, op: str, args: dict | None = None, **kw) -> dict:
    msg, raw, priv = sealed(keep, key, op, args, **kw)
    reply = keep.queue.owner_request(msg)
    return owner_channel.open_reply(reply.sealed, priv, raw, keep.audit_public)


@pytest.fixture()
def world():
    owner = ed25519.Ed25519PrivateKey.generate()
    keep = Keep()
    req = keep.queue.submit(value={"type": "number", "value": 42.5},
                            rendered={"text/plain": "42.5"}, rtype="number", note="mean age",
                            source="keep.release(df.age.mean(), note='mean age')",
                            cell_digest="sha256:" + "0" * 64,
                            datasets=[DatasetRef("patients.csv", "sha256:d", fingerprint(owner))])
    return keep, owner, req


def test_approve_after_show(world):
    keep, owner, req = world
    listed = ask(keep, owner, "list")
    assert listed["ok"] and [r["id"] for r in listed["content"]["requests"]] == [req.id]
    shown = ask(keep, owner, "show", {"id": req.id})["content"]["request"]
    assert shown["text"] == "42.5" and "keep.release" in shown["source"] and shown["state"] == "pending"
    assert req.state == "pending"
    done = ask(keep, owner, "decide", {"id": req.id, "decision": "approve",
                                       "value_digest": shown["value_digest"]})
    assert done["ok"] and done["content"]["request"]["state"] == "approved"
    assert keep.queue.decided() == [req] and req.state == "approved"
    kinds = [k for k, _ in keep.log]
    assert kinds == ["review-request", "review-decision"]


def test_reject_carries_the_owners_reason(world):
    keep, owner, req = world
    d = req.digest
    done = ask(keep, owner, "decide", {"id": req.id, "decision": "reject", "reason": "too fine",
                                       "value_digest": d})
    assert done["content"]["request"]["state"] == "rejected" and req.reason == "too fine"
    again = ask(keep, owner, "decide", {"id": req.id, "decision": "approve", "value_digest": d})
    assert not again["ok"] and "already rejected" in again["reason"] and req.state == "rejected"


def test_a_key_that_is_not_the_datasets_owner_is_refused(world):
    keep, owner, req = world
    stranger = ed25519.Ed25519PrivateKey.generate()
    out = ask(keep, stranger, "decide", {"id": req.id, "decision": "approve", "value_digest": req.digest})
    assert not out["ok"] and "owns none of the datasets" in out["reason"]
    assert req.state == "pending" and ("owner-refused" in [k for k, _ in keep.log])
    assert ask(keep, stranger, "list")["content"]["requests"] == []


def test_a_forged_signature_is_refused(world):
    """The request names the owner's key but is signed by another: it does not open as theirs."""
    keep, owner, req = world
    msg, _, _ = sealed(keep, owner, "decide", {"id": req.id, "decision": "approve",
                                                 "value_digest": req.digest},
                       signer=ed25519.Ed25519PrivateKey.generate())
    with pytest.raises(protocol.ProtocolError, match="signature does not verify"):
        keep.queue.owner_request(msg)
    assert req.state == "pending"


def test_a_replayed_decision_is_refused(world):
    keep, owner, req = world
    msg, raw, priv = sealed(keep, owner, "decide", {"id": req.id, "decision": "reject",
                                                    "reason": "no", "value_digest": req.digest})
    first = owner_channel.open_reply(keep.queue.owner_request(msg).sealed, priv, raw, keep.audit_public)
    assert first["ok"]
    replay = owner_channel.open_reply(keep.queue.owner_request(msg).sealed, priv, raw, keep.audit_public)
    assert not replay["ok"] and "replayed" in replay["reason"]


def test_a_replayed_approval_does_not_approve_a_new_request(world):
    keep, owner, req = world
    args = {"id": req.id, "decision": "approve", "value_digest": req.digest}
    msg, _, _ = sealed(keep, owner, "decide", args)
    keep.queue.owner_request(msg)
    assert req.state == "approved"
    keep.queue.owner_request(msg)   # replayed: refused, and the log says so
    assert [e["reason"] for k, e in keep.log if k == "owner-refused"][0].startswith("replayed")


def test_a_decision_for_another_keep_is_refused(world):
    keep, owner, req = world
    other = Keep("k2")
    # sealed to the other Keep: this one cannot even open it
    msg, _, _ = sealed(other, owner, "decide", {"id": req.id, "decision": "approve",
                                                "value_digest": req.digest})
    with pytest.raises(protocol.ProtocolError, match="sealed to another Keep"):
        keep.queue.owner_request(msg)
    # sealed to this Keep but naming the other: refused by name
    out = ask(keep, owner, "decide", {"id": req.id, "decision": "approve", "value_digest": req.digest},
              keep_id="k2")
    assert not out["ok"] and "for Keep 'k2'" in out["reason"]
    out = ask(keep, owner, "list", config=b"\x08" * 48)
    assert not out["ok"] and "another configuration" in out["reason"]
    assert req.state == "pending"


def test_approving_another_value_than_the_one_shown_is_refused(world):
    keep, owner, req = world
    out = ask(keep, owner, "decide", {"id": req.id, "decision": "approve",
                                      "value_digest": "sha256:" + "1" * 64})
    assert not out["ok"] and "not the value queued" in out["reason"] and req.state == "pending"


def test_every_owner_of_the_data_must_approve():
    a, b = ed25519.Ed25519PrivateKey.generate(), ed25519.Ed25519PrivateKey.generate()
    keep = Keep()
    req = keep.queue.submit(value={"type": "number", "value": 1}, rendered={"text/plain": "1"},
                            rtype="number", note="", source="x", cell_digest="sha256:c",
                            datasets=[DatasetRef("a.csv", "sha256:a", fingerprint(a)),
                                      DatasetRef("b.csv", "sha256:b", fingerprint(b))])
    ask(keep, a, "decide", {"id": req.id, "decision": "approve", "value_digest": req.digest})
    assert req.state == "pending"
    ask(keep, b, "decide", {"id": req.id, "decision": "approve", "value_digest": req.digest})
    assert req.state == "approved"


def test_a_reply_for_another_request_or_from_another_key_is_refused(world):
    keep, owner, req = world
    msg, raw, priv = sealed(keep, owner, "list")
    reply = keep.queue.owner_request(msg)
    _, raw2, priv2 = sealed(keep, owner, "list")
    with pytest.raises(owner_channel.OwnerChannelError, match="another request"):
        owner_channel.open_reply(reply.sealed, priv2, raw2, keep.audit_public)
    with pytest.raises(owner_channel.OwnerChannelError, match="audit key"):
        owner_channel.open_reply(reply.sealed, priv, raw, Keep().audit_public)


@pytest.mark.parametrize("args, words", [
    ({"id": 1, "decision": "maybe", "value_digest": "sha256:" + "0" * 64}, "approve\" or \"reject"),
    ({"id": 1, "decision": "reject", "value_digest": "sha256:" + "0" * 64}, "needs a reason"),
    ({"id": 0, "decision": "approve", "value_digest": "sha256:" + "0" * 64}, "request id"),
    ({"id": 1, "decision": "approve"}, "value_digest"),
])
def test_malformed_decisions_are_refused_before_sending(args, words):
    with pytest.raises(owner_channel.OwnerChannelError, match=words):
        owner_channel.make_request(keep_id="k", config_digest=CONFIG, op="decide", args=args,
                                   owner_alg="ed25519", owner_key=b"\0" * 32, reply_key=b"\0" * 32,
                                   nonce=os.urandom(32), t=1.0)


def test_no_owner_no_review():
    keep = Keep()
    with pytest.raises(review.NotQueued, match="no owner can review") as got:
        keep.queue.submit(value={"type": "number", "value": 1}, rendered={}, rtype="number",
                          note="", source="", cell_digest="", datasets=[])
    assert got.value.rule == "release.mode" and not keep.queue.requests


def test_the_audit_log_holds_no_digest_or_note_of_a_value_not_released(world):
    """The analyst reads the audit log: a pending or rejected value leaves no digest there."""
    keep, owner, req = world
    ask(keep, owner, "decide", {"id": req.id, "decision": "reject", "reason": "no",
                                "value_digest": req.digest})
    logged = repr(keep.log)
    assert req.digest not in logged and "mean age" not in logged and "42.5" not in logged
