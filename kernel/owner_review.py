"""The data owner's review of releases, on the data owner's machine: one :class:`OwnerSession`
per Keep — attested with the owner's own fresh nonce under the owner's own expectations, then
review requests signed with the owner key and sealed to the Keep's attested dataset key
(:mod:`keepbook.keep.shared.owner_channel`), relayed by the keep manager.  Used by
``keepbook review`` (:mod:`keepbook.kernel.review_cli`) and by ``%review`` in a notebook."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

from keepbook.keep.shared import dataset_format, owner_channel, protocol, sealing
from keepbook.keep.shared.audit_format import AUDIT_KEY
from keepbook.keep.shared.handshake import Handshake, Role, State
from keepbook.kernel import dataset_sealer
from keepbook.kernel.attestation import AttestationResult, ExpectationBuilder, verify_attestation
from keepbook.kernel.client import AttestationRefused, KeepError
from keepbook.kernel.manager_client import ManagerClient


class ReviewError(KeepError):
    """The Keep refused the owner's request (its signed reason), or the answer did not check."""


@dataclass
class OwnerSession:
    manager: ManagerClient
    keep_id: str
    attestation: AttestationResult
    owner_key: Any
    suite: str = sealing.DEFAULT_SUITE
    handshake: Handshake = field(default_factory=lambda: Handshake(Role.CLIENT, State.READY))

    @classmethod
    async def attest(cls, manager: ManagerClient, keep_id: str, expect: ExpectationBuilder,
                     owner_key: Any) -> "OwnerSession":
        """Attest the Keep with a fresh nonce and verify it under ``expect`` (the owner's own
        expectations: trust policy, profile, fingerprint).  AttestationRefused otherwise —
        nothing is sent to a Keep that did not verify."""
        hs = Handshake(Role.CLIENT, State.READY)
        nonce = os.urandom(32)
        req = protocol.AttestRequest(nonce=nonce)
        hs.send(req)
        try:
            resp = await manager.attest(keep_id, nonce)
            hs.receive(resp)
        except BaseException:
            hs.abandon()
            raise
        result = verify_attestation(resp, expect.nonce(nonce).keep_id(keep_id).build())
        if not result.ok:
            raise AttestationRefused(result)
        hs.verified()
        return cls(manager=manager, keep_id=keep_id, attestation=result, owner_key=owner_key,
                   handshake=hs)

    @property
    def owner(self) -> str:
        return dataset_format.fingerprint(*dataset_sealer.owner_public(self.owner_key))

    async def ask(self, op: str, args: dict | None = None) -> dict:
        """One signed, sealed request; the Keep's verified answer (ReviewError if refused)."""
        self.handshake.require_owner_channel()   # only to a Keep whose evidence verified
        config = self.attestation.config
        assert config is not None and config.keys is not None
        reply_private, reply_public = sealing.generate(owner_channel.REPLY_SUITE)
        alg, pub = dataset_sealer.owner_public(self.owner_key)
        try:
            raw = owner_channel.make_request(
                keep_id=self.keep_id, config_digest=config.digest(), op=op, args=args or {},
                owner_alg=alg, owner_key=pub, reply_key=reply_public, nonce=os.urandom(32),
                t=round(time.time(), 3))
            keep_key = dataset_format.recipient_from_config(config, self.suite)
            sealed = owner_channel.seal_request(
                raw, lambda m: dataset_sealer.sign(self.owner_key, m), self.suite, keep_key)
        except (owner_channel.OwnerChannelError, dataset_format.DatasetError) as exc:
            raise ReviewError(f"review request not sent: {exc}") from None
        reply = await self.manager.owner(self.keep_id, protocol.OwnerRequest(suite=self.suite,
                                                                            sealed=sealed))
        audit_key = config.keys.get(AUDIT_KEY)
        if not isinstance(audit_key, bytes):
            raise ReviewError("the Keep's attested config has no audit key to check its answer")
        try:
            resp = owner_channel.open_reply(reply.sealed, reply_private, raw, audit_key)
        except owner_channel.OwnerChannelError as exc:
            raise ReviewError(f"the Keep's answer does not check: {exc}") from None
        if not resp["ok"]:
            raise ReviewError(f"the Keep refused: {resp['reason']}")
        return resp["content"]

    async def list(self) -> list[dict]:
        return list((await self.ask("list")).get("requests") or [])

    async def show(self, rid: int) -> dict:
        return dict((await self.ask("show", {"id": rid})).get("request") or {})

    async def decide(self, rid: int, decision: str, value_digest: str, reason: str = "") -> dict:
        """Approve or reject request ``rid``, naming the value digest the owner reviewed."""
        content = await self.ask("decide", {"id": rid, "decision": decision, "reason": reason,
                                            "value_digest": value_digest})
        return dict(content.get("request") or {})


def describe(r: dict) -> str:
    """One request, for a terminal: what it is, who must decide, and its state."""
    lines = [f"#{r.get('id')}  {str(r.get('state', '')).upper()}  {r.get('type')}  "
             f"note: {r.get('note') or '(none)'}",
             f"    datasets: {', '.join(r.get('datasets') or [])}   cell {r.get('cell_digest')}",
             f"    value {r.get('value_digest')}"]
    if r.get("reason"):
        lines.append(f"    reason: {r['reason']}")
    if "text" in r:
        lines += ["    value:", *("      " + ln for ln in str(r["text"]).splitlines())]
        if r.get("text_cut"):
            lines.append(f"      … and {r['text_cut']} more characters (not shown)")
        lines += ["    cell source:", *("      " + ln for ln in str(r.get("source", "")).splitlines())]
        if r.get("source_cut"):
            lines.append(f"      … and {r['source_cut']} more characters (not shown)")
    return "\n".join(lines)
