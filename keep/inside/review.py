"""Owner review of releases, inside the Keep (``[release] mode = "review"``).

A ``keep.release(value, note=...)`` that passes the owner's rules is not shown: it is queued here
with its note, the cell's source and digest and the datasets in the Keep, and the analyst sees
"pending".  The owners of those datasets — authenticated by the owner keys whose fingerprints the
datasets carry, over their own sealed channel (:mod:`keepbook.keep.shared.owner_channel`) — list,
inspect and approve or reject it.  It is released only when every owner of a dataset in the Keep
at the time approved; one rejection rejects it, with that owner's reason.  Every request,
decision and refused owner request is in the audit log."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from keepbook.keep.shared import owner_channel, protocol
from keepbook.keep.shared.owner_channel import OwnerChannelError, OwnerRequest

Audit = Callable[[str, dict], Any]
#: how much of a value's text and of the cell's source an owner's ``show`` carries at most
SHOW_CHARS = 128 * 1024
#: the largest value (its CBOR form) a ``show`` carries as it is (a figure's PNG); else its text
SHOW_VALUE_BYTES = 384 * 1024
#: owner requests one Keep remembers (their nonces: a replay is refused)
MAX_OWNER_REQUESTS = 100_000
MAX_PENDING = 1000


class NotQueued(Exception):
    """A release that could not be queued: ``rule`` is what the notice names, ``why`` says so."""

    def __init__(self, rule: str, why: str):
        super().__init__(why)
        self.rule, self.why = rule, why


@dataclass(frozen=True)
class DatasetRef:
    name: str
    digest: str
    owner: str


@dataclass
class ReviewRequest:
    id: int
    value: Any                 # the released form (keep/shared/policy.py check_value)
    rendered: dict             # the MIME bundle the gate made from it
    rtype: str
    note: str
    source: str                # the cell's code
    cell_digest: str
    datasets: tuple[DatasetRef, ...]
    created: float = field(default_factory=time.time)
    state: str = "pending"     # pending → approved | rejected
    approvals: dict[str, float] = field(default_factory=dict)
    reason: str = ""           # a rejection's reason (the owner's words)
    decided_by: str = ""
    delivered: bool = False
    refused: str = ""          # the rule that last kept an approved value in (said once)

    @property
    def owners(self) -> set[str]:
        return {d.owner for d in self.datasets}

    @property
    def digest(self) -> str:
        return owner_channel.value_digest(self.value, self.note)

    def summary(self) -> dict:
        return {"id": self.id, "state": self.state, "type": self.rtype, "note": self.note,
                "value_digest": self.digest, "cell_digest": self.cell_digest,
                "created": round(self.created, 3),
                "datasets": [d.name for d in self.datasets], "reason": self.reason,
                "approved_by": sorted(self.approvals)}


class ReviewQueue:
    """The Keep's review requests and its end of the owner channel.  Thread-safe: cells submit
    from worker threads, owner requests arrive on the control pipe, the analyst polls."""

    def __init__(self, keep_id: str, config_digest: bytes,
                 dataset_keys: dict[str, tuple[Any, bytes]], sign: Callable[[bytes], bytes],
                 audit: Audit):
        self.keep_id = keep_id
        self.config_digest = config_digest
        self._keys = dataset_keys
        self._sign = sign
        self.audit = audit
        self.requests: dict[int, ReviewRequest] = {}
        self._nonces: set[bytes] = set()
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ the analyst's side
    def submit(self, *, value: Any, rendered: dict, rtype: str, note: str, source: str,
               cell_digest: str, datasets: list[DatasetRef]) -> ReviewRequest:
        """Queue a release for review; :class:`NotQueued` says why it cannot be."""
        if not datasets:
            raise NotQueued("release.mode", "no data owner's dataset is in this Keep, so no "
                            "owner can review this release; nothing was queued")
        with self._lock:
            if sum(r.state == "pending" for r in self.requests.values()) >= MAX_PENDING:
                raise NotQueued("release.mode", f"{MAX_PENDING} releases already wait for review")
            req = ReviewRequest(id=len(self.requests) + 1, value=value, rendered=rendered,
                                rtype=rtype, note=note, source=source, cell_digest=cell_digest,
                                datasets=tuple(datasets))
            # no value digest and no note: the analyst reads this log, and a digest of a value
            # not (yet) released is a brute-force oracle; the owner sees both on their channel
            if self.audit("review-request", {"id": req.id, "type": rtype,
                                             "cell_digest": cell_digest,
                                             "datasets": [d.name for d in datasets],
                                             "owners": sorted(req.owners)}) is False:
                raise NotQueued("audit.full", "the Keep's audit log is full, and nothing is "
                                "queued that the log cannot record")
            self.requests[req.id] = req
        return req

    def decided(self) -> list[ReviewRequest]:
        """Requests the owners decided (approved ones carry the value to release)."""
        with self._lock:
            return [r for r in self.requests.values() if r.state != "pending"]

    def get(self, rid: int) -> ReviewRequest | None:
        return self.requests.get(rid)

    # ------------------------------------------------------------------ the owner's side
    def owner_request(self, msg: protocol.OwnerRequest) -> protocol.OwnerReply:
        """One sealed owner request → the sealed, signed reply.  A request that cannot be
        opened at all is a :class:`~keepbook.keep.shared.protocol.ProtocolError` (there is no
        one to seal a reply to); every other refusal is a signed reply with the reason."""
        key = self._keys.get(msg.suite)
        if key is None:
            raise protocol.ProtocolError(f"owner request: this Keep has no key of suite "
                                         f"{msg.suite!r}", 400)
        try:
            req = owner_channel.open_request(msg.sealed, key[0], msg.suite)
        except OwnerChannelError as exc:
            self.audit("owner-refused", {"reason": str(exc)})
            raise protocol.ProtocolError(f"owner request refused: {exc}", 400) from None
        try:
            content = self._act(req)
            ok, reason = True, ""
        except OwnerChannelError as exc:
            self.audit("owner-refused", {"owner": req.owner, "op": req.op, "reason": str(exc)})
            content, ok, reason = {}, False, str(exc)
        sealed = owner_channel.seal_reply(req, self.keep_id, ok, content, reason, self._sign)
        return protocol.OwnerReply(sealed=sealed)

    def _act(self, req: OwnerRequest) -> dict:
        if req.keep_id != self.keep_id:
            raise OwnerChannelError(f"this request is for Keep {req.keep_id!r}; this is Keep "
                                    f"{self.keep_id!r}")
        if req.config_digest != self.config_digest:
            raise OwnerChannelError("this request names another configuration of the Keep than "
                                    "the one running: attest the Keep again")
        with self._lock:
            if req.nonce in self._nonces:
                raise OwnerChannelError("replayed: this Keep already received this request "
                                        "(its nonce); nothing was done again")
            if len(self._nonces) >= MAX_OWNER_REQUESTS:
                raise OwnerChannelError("this Keep has taken all the owner requests it can")
            self._nonces.add(req.nonce)
            mine = [r for r in self.requests.values() if req.owner in r.owners]
            if req.op == "list":
                return {"requests": [r.summary() for r in mine]}
            target = self.requests.get(req.args["id"])
            if target is None or req.owner not in target.owners:
                owners = sorted(target.owners) if target else []
                raise OwnerChannelError(
                    f"request #{req.args['id']}: " + ("no such request" if target is None else
                    f"signed by {req.owner}, which owns none of the datasets it read (owners: "
                    f"{', '.join(owners)})"))
            if req.op == "show":
                return {"request": self._show(target)}
            return self._decide(req, target)

    def _decide(self, req: OwnerRequest, target: ReviewRequest) -> dict:
        """Under the lock: record one owner's decision on ``target``."""
        args = req.args
        if target.state != "pending":
            raise OwnerChannelError(f"request #{target.id} was already {target.state}")
        if args["value_digest"] != target.digest:
            raise OwnerChannelError(f"request #{target.id}: the value digest you approve is not "
                                    "the value queued — `show` it again")
        if args["decision"] == "reject":
            state, reason = "rejected", args["reason"]
        else:
            approvals = set(target.approvals) | {req.owner}
            state, reason = ("approved" if target.owners <= approvals else "pending"), ""
        # recorded first: a decision the log cannot hold is not taken
        if self.audit("review-decision", {"id": target.id, "owner": req.owner,
                                          "decision": args["decision"], "reason": reason,
                                          "state": state}) is False:
            raise OwnerChannelError("the Keep's audit log is full: no decision is taken that "
                                    "it cannot record")
        if args["decision"] == "reject":
            target.reason = reason
        else:
            target.approvals[req.owner] = time.time()
        if state != "pending":
            target.state, target.decided_by = state, req.owner
        return {"request": target.summary()}

    @staticmethod
    def _show(r: ReviewRequest) -> dict:
        text = str(r.rendered.get("text/plain", ""))
        small = len(protocol.dumps(r.value)) <= SHOW_VALUE_BYTES
        return {**r.summary(), "value": r.value if small else None,
                "text": text[:SHOW_CHARS], "text_cut": max(0, len(text) - SHOW_CHARS),
                "source": r.source[:SHOW_CHARS], "source_cut": max(0, len(r.source) - SHOW_CHARS),
                "dataset_digests": {d.name: d.digest for d in r.datasets}}
