"""The Keep's audit log: hash-chained entries, a head signed with a key bound to the attestation.

Shared format: the Keep appends and signs (:mod:`keepbook.keep.inside.audit_log`); the kernel's
``%audit`` and ``keepbook audit verify`` check (:func:`verify_export`).  Format (canonical CBOR throughout)::

    entry_i = {"seq": i, "t": unix time, "kind": text, "data": map, "prev": h_{i-1}}
    h_i     = SHA-256("keepbook/audit/v1" ‖ CBOR(entry_i))
    h_{-1}  = SHA-256("keepbook/audit/genesis/v1" ‖ SHA-384 digest of the Keep's config)
    head    = {"keep_id", "config_digest", "count": n, "head": h_{n-1}, "t"}
    signature = Ed25519(audit key, "keepbook/audit-head/v1" ‖ CBOR(head))

The audit key is made inside the Keep at start; its public half is in the Keep's attested
config (``keys["audit/ed25519"]``), so a verified attestation vouches for it.  An edited entry
breaks its successor's ``prev``; a removed or reordered entry breaks ``seq`` and the chain; a cut
tail no longer matches the signed head.  The export file (``.audit.cbor``) also carries the
attestation answer it was verified against, so the data owner can check it offline.

Entry kinds: ``start`` (profile, policy digest), ``cell`` (cell digest), ``dataset`` (name,
keyed digest, owner, policy digest, access), ``release`` (digest of the released value, type, bytes,
note), ``refusal`` (the rule — once per rule per cell), ``error`` (how it was shown: ``full``
with the digest of what was shown, or ``type`` with the error id the notebook showed),
``upload-refused`` (reason), ``log-full`` (the log reached its limit; nothing more happened);
issue 16 adds ``review-request`` (a release queued for the owners: type, cell digest, datasets —
never the value's digest or the note), ``review-decision`` (approve/reject, the owner, the
reason, the new state), ``owner-refused`` (an owner request refused, with the reason),
``dp-charge`` (a DP answer's ε and δ and the budget left), ``query`` (a threshold query, the
groups shown) and ``query-refused`` (a trusted query refused, with the reason).

What the analyst can read here is never a function of withheld content: a refusal names its
rule and nothing else (an unsalted digest of the withheld output was a brute-force oracle —
printed one character per flush, each digest named its character), a redacted error has a
random id, not a digest.  Digests appear only of what the reader was shown anyway (released
values, errors shown in full, the cell's own code) and, for datasets, keyed with the dataset's
own key (see :mod:`keepbook.keep.shared.dataset_format`), which the owner checks against what
``keepbook seal`` printed.

Size: a Keep's log holds at most :data:`MAX_LOG_BYTES`; it is exported in pages of at most
:data:`PAGE_BYTES` (``audit_request {start}`` → ``audit_export {entries, head, signature,
start}``), each page with the signed head of the whole log at that moment; a reader verifies
the chain up to the head of its first page.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

from keepbook.keep.shared import protocol

ENTRY_DOMAIN = b"keepbook/audit/v1"
GENESIS_DOMAIN = b"keepbook/audit/genesis/v1"
HEAD_DOMAIN = b"keepbook/audit-head/v1"
FORMAT = "keepbook-audit/v1"
AUDIT_KEY = "audit/ed25519"
#: the most a Keep's audit log holds; then it records "log-full" and the Keep stops acting
MAX_LOG_BYTES = 16 * 1024 * 1024
#: the most one export page carries
PAGE_BYTES = 4 * 1024 * 1024


class AuditError(ValueError):
    """The audit log does not verify; the message names the failing check."""


def genesis(config_digest: bytes) -> bytes:
    return hashlib.sha256(GENESIS_DOMAIN + config_digest).digest()


def entry_hash(entry: dict) -> bytes:
    return hashlib.sha256(ENTRY_DOMAIN + protocol.dumps(entry)).digest()


@dataclass
class VerifiedLog:
    entries: list[dict]
    head: dict
    config: protocol.KeepConfig
    checks: list[str] = field(default_factory=list)

    def table(self) -> list[dict[str, Any]]:
        rows = []
        for e in self.entries:
            d = e["data"]
            rows.append({"seq": e["seq"], "time": time.strftime("%H:%M:%S", time.localtime(e["t"])),
                         "kind": e["kind"], "detail": describe(e["kind"], d)})
        return rows


def _num(v: Any) -> str:
    return f"{v:.6g}" if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)


def describe(kind: str, d: dict) -> str:
    def short(v: Any) -> Any:
        if isinstance(v, str) and v.startswith(("sha256:", "hmac-sha256:")):
            return v[:v.index(":") + 17] + "…"
        return v
    if kind == "start":
        return f"profile {d.get('profile')}, policy {short(d.get('policy_digest'))}"
    if kind == "cell":
        return f"{d.get('cell_kind')} cell {short(d.get('digest'))}"
    if kind == "dataset":
        where = "(trusted queries only) " if d.get("access") == "queries" else "/data/"
        return (f"{where}{d.get('name')} {d.get('bytes')} bytes {short(d.get('digest'))}, owner "
                f"{short(d.get('owner'))}, policy {short(d.get('policy_digest'))}")
    if kind == "release":
        note = f" — {d.get('note')}" if d.get("note") else ""
        rows = f", {d.get('rows')} rows" if d.get("rows") is not None else ""
        return f"released {d.get('type')} {short(d.get('digest'))} ({d.get('bytes')} bytes{rows}){note}"
    if kind == "refusal":
        return f"withheld by rule {d.get('rule')} (this cell; once per rule)"
    if kind == "error":
        if d.get("error_id"):
            return f"error id {d.get('error_id')} shown as its type only"
        return f"error shown in full ({short(d.get('digest'))})"
    if kind == "log-full":
        return (f"the log reached its limit of {d.get('limit')} bytes: from here on the Keep "
                "released nothing, ran no cell and took no dataset")
    if kind == "review-request":
        return (f"release #{d.get('id')} queued for review: a {d.get('type')} from cell "
                f"{short(d.get('cell_digest'))}, datasets {', '.join(d.get('datasets') or [])}")
    if kind == "review-decision":
        why = f" ({d.get('reason')})" if d.get("reason") else ""
        return f"release #{d.get('id')}: {d.get('decision')} by {short(d.get('owner'))}{why} → {d.get('state')}"
    if kind == "owner-refused":
        return f"owner request refused: {d.get('reason')}"
    if kind == "dp-charge":
        return (f"DP {d.get('query')}: spent ε={d.get('epsilon')}, δ={d.get('delta')}; "
                f"ε={_num(d.get('remaining_epsilon'))} left")
    if kind == "query":
        return f"threshold query {d.get('query')}: {d.get('groups_shown')} groups of ≥ {d.get('min_group')} rows"
    if kind == "query-refused":
        return f"trusted query refused: {d.get('reason')}"
    if kind == "upload-refused":
        return f"dataset refused: {d.get('reason')}"
    return ", ".join(f"{k}={v}" for k, v in d.items())


def decode_entries(blob: bytes) -> list[dict]:
    """The entries of an export, decoded by the protocol's strict decoder (no tags, no duplicate
    keys) and each checked to be canonical, so one entry has one encoding."""
    out = []
    try:
        items = protocol.decode_sequence(blob)
    except protocol.ProtocolError as exc:
        raise AuditError(f"the entries do not decode: {exc.reason}") from None
    for raw, item in items:
        if not isinstance(item, dict) or protocol.dumps(item) != raw:
            raise AuditError(f"entry {len(out)} is not a canonical audit entry")
        out.append(item)
    return out


def verify_export(entries_blob: bytes, head: Any, signature: bytes,
                  config: protocol.KeepConfig) -> VerifiedLog:
    """Check chain, head and signature against the audit key in an (attested) config."""
    checks = []
    key = (config.keys or {}).get(AUDIT_KEY) if config.keys else None
    if not isinstance(key, bytes) or len(key) != 32:
        raise AuditError("binding: the Keep's attested config carries no audit key")
    if not isinstance(head, dict) or not isinstance(signature, bytes):
        raise AuditError("head: missing or malformed signed head")
    try:
        ed25519.Ed25519PublicKey.from_public_bytes(key).verify(signature, HEAD_DOMAIN + protocol.dumps(head))
    except InvalidSignature:
        raise AuditError("signature: the signed head does not verify with the attested audit key "
                         "(the head was altered, or the log comes from another Keep)") from None
    checks.append("signature: head signed by the audit key in the attested config")
    digest = config.digest()
    if head.get("config_digest") != digest:
        raise AuditError("binding: the log's head names another Keep config than the attested one")
    checks.append("binding: the log belongs to the attested Keep config")
    entries = decode_entries(entries_blob)
    prev = genesis(digest)
    for i, e in enumerate(entries):
        if e.get("seq") != i:
            raise AuditError(f"chain: entry at position {i} has seq {e.get('seq')!r} — an entry "
                             "was removed, inserted or reordered")
        if e.get("prev") != prev:
            raise AuditError(f"chain: entry {i} does not follow entry {i - 1} — an entry was "
                             "edited, removed or reordered")
        if not isinstance(e.get("kind"), str) or not isinstance(e.get("data"), dict):
            raise AuditError(f"entry {i}: malformed")
        prev = entry_hash(e)
    if head.get("count") != len(entries):
        raise AuditError(f"head: the signed head counts {head.get('count')} entries, the log has "
                         f"{len(entries)} — entries were removed or added")
    if head.get("head") != prev:
        raise AuditError("head: the last entry is not the one the signed head names — the log "
                         "was cut or edited")
    checks.append(f"chain: {len(entries)} entries, each linked to the previous one")
    return VerifiedLog(entries=entries, head=head, config=config, checks=checks)


# ---------------------------------------------------------------------- the export file


def export_file(export: dict, attest_response: bytes) -> bytes:
    """What `%audit` saves and `keepbook audit verify` reads."""
    return protocol.dumps({"format": FORMAT, "entries": export["entries"], "head": export["head"],
                           "signature": export["signature"], "attestation": attest_response})


def read_file(data: bytes) -> dict:
    try:
        raw = protocol.loads(data, max_bytes=protocol.MAX_MESSAGE_BYTES)
    except protocol.ProtocolError as exc:
        raise AuditError(f"not an audit file: {exc.reason}") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise AuditError(f"not a {FORMAT} file")
    for k, t in (("entries", bytes), ("head", dict), ("signature", bytes), ("attestation", bytes)):
        if not isinstance(raw.get(k), t):
            raise AuditError(f"audit file: field {k!r} is missing or of the wrong type")
    return raw
