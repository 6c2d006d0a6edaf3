"""The output gate: everything that leaves the Keep on the attested channel passes here first —
every event of a cell (:class:`CellGate`) and every reply to a request: completion,
inspection, status, review outcomes (:class:`Enforcer`).  It applies the data owner's output policy (the format
is :mod:`keepbook.keep.shared.policy`); the kernel never filters anything (it could not be
trusted to).  It runs in the Keep's own process, outside the interpreter the cell runs in, so
nothing a cell does to its session — replacing the guest driver's functions, ``globals()``
tricks, calling the host door itself — changes what the gate lets out.

What a withheld output leaves behind is fixed by the rule, never by the output: the notice
names the rule (once per rule per cell), the audit log records the rule (coalesced the same
way, no digest of the withheld content: a digest the analyst can read is a brute-force oracle),
and in production the cell's status says only ok/error and whether something was withheld.

Issue 16 adds the other ways out, each decided here or by the Keep's trusted side, never by the
cell: under ``[release] mode = "review"`` a release that passes the rules is queued for its data
owners (:mod:`keepbook.keep.inside.review`) and leaves only once they all approved
(:meth:`Enforcer.review_outcomes`); a ``keep.dp`` / ``keep.query`` answer arrives as the trusted
side's own ``answer`` event (:mod:`keepbook.keep.inside.trusted`) and is rendered and counted
like a release."""

from __future__ import annotations

import base64
import builtins
import hashlib
import json
import os
import threading
import unicodedata
from typing import TYPE_CHECKING, Any, Callable

from keepbook.keep.inside import introspection
from keepbook.keep.inside.figures import FigureError, reencode_png
from keepbook.keep.shared.policy import NOTE_MAX_CHARS, OutputPolicy, check_value

if TYPE_CHECKING:
    from keepbook.keep.inside.review import DatasetRef, ReviewQueue, ReviewRequest

#: exception names shown as they are; any other (cell-defined) class is shown as "Exception",
#: so an exception's class name cannot carry data past an ``errors = "type"`` policy.
_BUILTIN_ERRORS = frozenset(n for n in dir(builtins)
                            if n.endswith(("Error", "Exception", "Interrupt", "Exit", "Warning")))
_STATUS_KEYS = {"ok": bool, "reason": str, "elapsed_s": (int, float), "output_bytes": int,
                "truncated": bool, "exit_code": int}
_STATUS_REASONS = {"ok", "error", "interrupted", "timeout", "exit", "crashed", "engine",
                   "the cell did not finish"}
#: what a Keep's ``status`` request may answer (its own counters, never a cell's data)
_KEEP_STATUS_KEYS = ("cells_run", "bytes_released", "uptime_s", "busy", "profile", "backend")

Notice = tuple[str, dict]
#: ``audit(kind, entry)``; returns False when the entry could not be recorded (the log is full)
AuditHook = Callable[[str, dict], "bool | None"]


#: why nothing leaves once the audit log is full (its ``append`` returned False)
AUDIT_FULL_WHY = "the Keep's audit log is full, and nothing leaves that the log cannot record"


def withheld_notice(rule: str, why: str) -> Notice:
    return ("notice", {"text": f"withheld by policy: {rule} — {why}", "reason": "withheld",
                       "rule": rule})


class Enforcer:
    """One per Keep: the effective policy, the session's byte budget, and the replies to
    requests (completion, inspection, status, review outcomes) that leave the Keep."""

    def __init__(self, policy: OutputPolicy, profile: str, audit: AuditHook | None = None,
                 reviews: "ReviewQueue | None" = None,
                 datasets: "Callable[[], list[DatasetRef]] | None" = None):
        self.policy = policy
        self.profile = profile
        self.session_used = 0
        self.audit = audit or (lambda kind, entry: True)
        self.reviews = reviews            # [release] mode = "review": the owners decide
        self.datasets = datasets or list  # the datasets in the Keep (their owners review)
        # a cell's events and the analyst's review polls may count bytes at the same time
        self.lock = threading.RLock()

    @property
    def strict(self) -> bool:
        """Production, or any policy that releases only explicit releases: no numbers about
        withheld output in statuses."""
        return self.profile == "production" or self.policy.release_required

    def tighten(self, other: OutputPolicy) -> None:
        self.policy = self.policy.meet(other)

    def cell(self, source: str = "", digest: str = "") -> "CellGate":
        return CellGate(self, source, digest)

    def charge_session(self, n: int) -> str | None:
        """The rule ``n`` more bytes of a reply would break, or None (and they are counted)."""
        with self.lock:
            if self.policy.session_bytes and self.session_used + n > self.policy.session_bytes:
                return "output.session_bytes"
            self.session_used += n
            return None

    # -- owner review: the analyst asks how the owners decided
    def review_outcomes(self, ids: list[int]) -> list[dict]:
        """How the owners decided releases ``ids``: pending, rejected with the owner's reason,
        or approved — then the value is released here, counted against the session's byte
        budget and recorded in the audit log once, the first time it is asked for."""
        out: list[dict] = []
        for rid in ids:
            r = self.reviews.get(rid) if self.reviews is not None else None
            if r is None:
                continue
            if r.state == "pending":
                out.append({"id": rid, "state": "pending"})
            elif r.state == "rejected":
                out.append({"id": rid, "state": "rejected", "reason": r.reason})
            else:
                out.append(self._deliver(r))
        return out

    def _deliver(self, r: "ReviewRequest") -> dict:
        with self.lock:
            if not r.delivered:
                size = _release_size(r.value, r.note)
                rule = self.charge_session(size)
                why = (f"the output budget of {self.policy.session_bytes} bytes for this Keep "
                       "session is spent") if rule else ""
                if not rule and self.audit("release", {"digest": r.digest, "type": r.rtype,
                                                       "bytes": size, "note": r.note,
                                                       "review": r.id}) is False:
                    self.session_used -= size
                    rule, why = "audit.full", AUDIT_FULL_WHY
                if rule:  # approved, but not released now: said once in the log, per rule
                    if r.refused != rule:
                        r.refused = rule
                        self.audit("refusal", {"rule": rule, "review": r.id})
                    return {"id": r.id, "state": "approved",
                            "notice": withheld_notice(rule, why)[1]["text"]}
                r.delivered = True
        meta = {"keepbook": {"released": True, "type": r.rtype, "note": r.note,
                             "digest": r.digest, "review": {"id": r.id, "state": "approved"}}}
        return {"id": r.id, "state": "approved", "data": r.rendered, "metadata": meta}

    # -- replies to requests
    def complete(self, code: str, pos: int, ask: introspection.Ask) -> dict:
        return introspection.completion(self.policy.introspection, code, pos, ask,
                                        self.charge_session)

    def inspect(self, code: str, pos: int, ask: introspection.Ask) -> dict:
        return introspection.inspection(self.policy.introspection, ask, self.charge_session,
                                        self.policy.allows_mime)

    def keep_status(self, counts: dict) -> dict:
        """The Keep's own counters; ``bytes_released`` is what this gate let out."""
        out = {k: counts[k] for k in _KEEP_STATUS_KEYS if k in counts}
        out["bytes_released"] = self.session_used
        return out


class CellGate:
    """Every event of one cell passes :meth:`filter`; it returns what may leave the Keep."""

    def __init__(self, enforcer: Enforcer, source: str = "", digest: str = ""):
        self.e = enforcer
        self.source = source    # the cell's code: what a reviewing owner reads
        self.digest = digest
        self.used = 0
        self.withheld = False
        self._noticed: set[str] = set()
        self._errored = False

    @property
    def p(self) -> OutputPolicy:
        """Read each time: a dataset uploaded mid-cell tightens the policy at once."""
        return self.e.policy

    # -- helpers
    def _withhold(self, rule: str, why: str) -> list[Notice]:
        """Once per rule per cell: one notice, one audit entry naming the rule (no digest)."""
        self.withheld = True
        if rule in self._noticed:
            return []
        self._noticed.add(rule)
        self.e.audit("refusal", {"rule": rule})
        return [withheld_notice(rule, why)]

    def _charge(self, n: int) -> str | None:
        """The rule a further ``n`` bytes would break, or None (and the bytes are counted)."""
        p = self.p
        if p.cell_bytes and self.used + n > p.cell_bytes:
            return "output.cell_bytes"
        rule = self.e.charge_session(n)
        if rule is None:
            self.used += n
        return rule

    def _refund(self, n: int) -> None:
        with self.e.lock:
            self.used -= n
            self.e.session_used -= n

    def _budget_why(self, rule: str) -> str:
        cell = rule == "output.cell_bytes"
        limit = self.p.cell_bytes if cell else self.p.session_bytes
        scope = "this cell" if cell else "this Keep session"
        return f"the output budget of {limit} bytes for {scope} is spent"

    # -- the filter
    def filter(self, kind: str, content: dict) -> list[Notice]:
        if kind == "release":
            return self._release(content)
        if kind == "answer":  # made by the Keep's trusted side (keep/inside/trusted.py)
            return self._answer(content)
        if kind == "notice":  # the Keep's own remarks, never cell data
            return [(kind, content)]
        if kind == "error":
            return self._error(content)
        if kind == "status":
            return [(kind, self._status(content))]
        p = self.p
        if p.release_required:
            return self._withhold("release.required", "only values passed to "
                                  "keep.release(value, note=...) leave this Keep")
        # an update, a clear or a pager page is display output: the same rules apply
        rule_kind = _DISPLAY_LIKE.get(kind, kind)
        if rule_kind not in p.kinds:
            return self._withhold(f"output.kinds ({rule_kind})", f"{rule_kind} output is not "
                                  "allowed to leave this Keep")
        if rule_kind in ("display_data", "execute_result") and kind != "clear_output":
            data = content.get("data") if isinstance(content.get("data"), dict) else {}
            kept = {m: v for m, v in data.items() if self.p.allows_mime(str(m))}
            if not kept:  # the output's own MIME names are not repeated: they are the cell's
                return self._withhold("output.mime", "none of its MIME types is allowed "
                                      f"(allowed: {', '.join(p.mime)})")
            content = {**content, "data": kept}
        meta = content.get("metadata")
        if isinstance(meta, dict) and "keepbook" in meta:  # the Keep's own labels: set only here
            content = {**content, "metadata": {k: v for k, v in meta.items() if k != "keepbook"}}
        rule = self._charge(len(json.dumps(content, default=str)))
        if rule:
            return self._withhold(rule, self._budget_why(rule))
        return [(kind, content)]

    def _error(self, content: dict) -> list[Notice]:
        first, self._errored = not self._errored, True
        if self.p.errors == "full":  # shown whole: its digest tells the reader nothing new
            if first:
                full = {k: content.get(k) for k in ("ename", "evalue", "traceback")}
                self.e.audit("error", {"shown": "full", "digest": _digest(full)})
            return [("error", content)]
        if not first:
            return self._withhold("output.errors", "this Keep shows one error per cell, as its "
                                  "type and an id")
        ename = str(content.get("ename", "Exception"))
        if ename not in _BUILTIN_ERRORS:
            ename = "Exception"
        eid = os.urandom(6).hex()  # random: a function of nothing the cell did
        self.e.audit("error", {"shown": "type", "error_id": eid})
        text = (f"{ename} (error id {eid}): details withheld by policy: output.errors — "
                f"this Keep shows the exception type only")
        return [("error", {"ename": ename, "evalue": f"error id {eid} — details withheld by policy",
                           "traceback": [text]})]

    def _status(self, content: dict) -> dict:
        ok = content.get("ok") is True
        reason = content.get("reason")
        if self.e.strict:  # ok/error and whether something was withheld: no counts, no sizes
            return {"ok": ok, "reason": reason if reason in _STATUS_REASONS else
                    ("ok" if ok else "error"), "withheld": self.withheld}
        out: dict = {}
        for key, types in _STATUS_KEYS.items():
            v = content.get(key)
            if isinstance(v, types) and not (isinstance(v, bool) and types is int):
                out[key] = v
        if self.p.errors == "type":
            if out.get("reason") not in _STATUS_REASONS:
                out["reason"] = "error" if not out.get("ok") else "ok"
            out.pop("exit_code", None)  # an exit code could carry data past the policy
        out["withheld"] = self.withheld
        return out

    def _note(self, note: Any) -> tuple[str, list[Notice]]:
        """(the note that may leave, notices): short, one line of text, and only where the
        policy releases text — a note is text the cell wrote, and could carry anything — or
        where the owners review each release (they read and approve the note with the value)."""
        if note is None or note == "":
            return "", []
        if not isinstance(note, str):
            return "", self._withhold("release.note", "a note must be text")
        if len(note) > NOTE_MAX_CHARS:
            return "", self._withhold("release.note", f"a note may be at most {NOTE_MAX_CHARS} "
                                      "characters; it stays in the Keep")
        if any(unicodedata.category(c)[0] == "C" for c in note):
            return "", self._withhold("release.note", "a note must be one line of printable "
                                      "text; it stays in the Keep")
        if "text" not in self.p.release_types and self.p.release_mode != "review":
            return "", self._withhold("release.note", "this policy releases no text, so the "
                                      "note stays in the Keep")
        return note, []

    def _release(self, content: dict) -> list[Notice]:
        """A value the cell passed to keep.release(): check it, render it ourselves."""
        value = content.get("value")
        try:
            rtype, rendered, rows = check_value(value)
            if rtype == "figure":  # pixels only: decoded and encoded again here
                png = base64.b64encode(reencode_png(base64.b64decode(value["png"]))).decode()
                value = {"type": "figure", "png": png}
                rendered = {"image/png": png, "text/plain": "<released figure>"}
        except (ValueError, FigureError) as exc:
            return self._withhold("release.types", f"the released value is not releasable: {exc}")
        p = self.p
        if rtype not in p.release_types:
            return self._withhold("release.types", f"a {rtype} may not be released (allowed: "
                                  f"{', '.join(p.release_types) or 'none'})")
        note, notices = self._note(content.get("note"))
        encoded = json.dumps(value, sort_keys=True, separators=(",", ":"))
        size = _release_size(value, note)
        if size > p.release_max_bytes:  # the size itself is not said: it is the cell's
            return notices + self._withhold("release.max_bytes", "the value (with its note) is "
                                            f"over the limit of {p.release_max_bytes} bytes per release")
        rendered = {m: v for m, v in rendered.items() if p.allows_mime(m)}
        if not rendered:
            return notices + self._withhold("output.mime", "no allowed MIME type can show this value")
        if p.release_mode == "review":
            return notices + self._review(value, rendered, rtype, note)
        rule = self._charge(size)
        if rule:
            return notices + self._withhold(rule, self._budget_why(rule))
        digest = "sha256:" + hashlib.sha256(encoded.encode()).hexdigest()  # of what is released
        entry = {"digest": digest, "type": rtype, "bytes": size, "note": note,
                 **({"rows": rows} if rows is not None else {})}
        if self.e.audit("release", entry) is False:
            self._refund(size)
            return notices + self._withhold("audit.full", AUDIT_FULL_WHY)
        meta = {"keepbook": {"released": True, "type": rtype, "note": note, "digest": digest}}
        return notices + [("display_data", {"data": rendered, "metadata": meta})]

    def _review(self, value: Any, rendered: dict, rtype: str, note: str) -> list[Notice]:
        """``[release] mode = "review"``: queue the value for its data owners; the analyst sees
        "pending", updated in place once they decide (:meth:`Enforcer.review_outcomes`)."""
        from keepbook.keep.inside.review import NotQueued

        if self.e.reviews is None:
            return self._withhold("release.mode", "this Keep cannot queue releases for review")
        try:
            req = self.e.reviews.submit(value=value, rendered=rendered, rtype=rtype, note=note,
                                        source=self.source, cell_digest=self.digest,
                                        datasets=self.e.datasets())
        except NotQueued as exc:
            return self._withhold(exc.rule, exc.why)
        text = f"⏳ release #{req.id} is waiting for the data owner's review"
        return [("display_data", {"data": {"text/plain": text},
                                  "metadata": {"keepbook": {"review": {"id": req.id,
                                                                       "state": "pending"}}}})]

    def _answer(self, content: dict) -> list[Notice]:
        """A keep.dp / keep.query answer the trusted side computed, labelled and audited:
        rendered here like a release and counted against the byte budgets (never queued for
        review: the owner's [dp] and [query] rules are what allow it)."""
        value, note = content.get("value"), str(content.get("note") or "")
        try:
            rtype, rendered, _ = check_value(value)
        except ValueError:
            return self._withhold("answer", "the trusted side made no showable answer")
        rendered = {m: v for m, v in rendered.items() if self.p.allows_mime(m)}
        if not rendered:
            return self._withhold("output.mime", "no allowed MIME type can show this answer")
        rule = self._charge(_release_size(value, note))
        if rule:
            return self._withhold(rule, self._budget_why(rule))
        meta = {"keepbook": {"released": True, "type": rtype, "note": note,
                             **{k: v for k, v in (content.get("keepbook") or {}).items()
                                if k in ("dp", "query")}}}
        if "text/plain" in rendered:
            rendered["text/plain"] = f"{rendered['text/plain']}\n  [{note}]"
        return [("display_data", {"data": rendered, "metadata": meta})]


_DISPLAY_LIKE = {"update_display_data": "display_data", "clear_output": "display_data",
                 "page": "display_data"}


def _release_size(value: Any, note: str) -> int:
    """What a released value counts against the byte limits: its JSON and its note."""
    return len(json.dumps(value, sort_keys=True, separators=(",", ":"))) + len(note.encode())


def _digest(value: Any) -> str:
    return "sha256:" + hashlib.sha256(json.dumps(value, sort_keys=True, default=str)
                                      .encode()).hexdigest()
