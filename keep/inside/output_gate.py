"""The output gate: every event a cell produces passes here, inside the Keep, before it may
leave on the attested channel.  It applies the data owner's output policy (the format is
:mod:`keepbook.keep.shared.policy`); the kernel never filters anything (it could not be trusted
to).  It runs in the Keep's own process, outside the interpreter the cell runs in, so nothing a
cell does to its session changes what the gate lets out."""

from __future__ import annotations

import builtins
import hashlib
import json
import os
import threading
from typing import TYPE_CHECKING, Any, Callable

from keepbook.keep.shared.policy import OutputPolicy, check_value

if TYPE_CHECKING:
    from keepbook.keep.inside.review import DatasetRef, ReviewQueue

#: exception names shown as they are; any other (cell-defined) class is shown as "Exception",
#: so an exception's class name cannot carry data past an ``errors = "type"`` policy.
_BUILTIN_ERRORS = frozenset(n for n in dir(builtins)
                            if n.endswith(("Error", "Exception", "Interrupt", "Exit", "Warning")))
_STATUS_KEYS = {"ok": bool, "reason": str, "elapsed_s": (int, float), "output_bytes": int,
                "truncated": bool, "withheld": int, "exit_code": int}
_STATUS_REASONS = {"ok", "error", "interrupted", "timeout", "exit", "crashed", "engine",
                   "the cell did not finish"}

Notice = tuple[str, dict]
AuditHook = Callable[[str, dict], None]


def withheld_notice(rule: str, why: str) -> Notice:
    return ("notice", {"text": f"withheld by policy: {rule} — {why}", "reason": "withheld",
                       "rule": rule})


class Enforcer:
    """One per Keep: the effective policy and the session's byte budget."""

    def __init__(self, policy: OutputPolicy, profile: str, audit: AuditHook | None = None,
                 reviews: "ReviewQueue | None" = None,
                 datasets: "Callable[[], list[DatasetRef]] | None" = None):
        self.policy = policy
        self.profile = profile
        self.session_used = 0
        self.audit = audit or (lambda kind, entry: None)
        self.reviews = reviews            # [release] mode = "review": the owner decides
        self.datasets = datasets or list  # the datasets in the Keep (their owners review)
        self._lock = threading.Lock()

    def tighten(self, other: OutputPolicy) -> None:
        self.policy = self.policy.meet(other)

    def cell(self, source: str = "", digest: str = "") -> "CellGate":
        return CellGate(self, source, digest)

    def review_outcomes(self, ids: list[int]) -> list[dict]:
        """How the owners decided releases ``ids`` (the analyst asks): an approved value is
        released here — charged to the session's byte budget once, the first time."""
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

    def _deliver(self, r: Any) -> dict:
        meta = {"keepbook": {"released": True, "type": r.rtype, "note": r.note,
                             "digest": r.digest, "review": {"id": r.id, "state": "approved"}}}
        with self._lock:
            if not r.delivered:
                size = len(json.dumps(r.value, sort_keys=True, separators=(",", ":")))
                p = self.policy
                if p.session_bytes and self.session_used + size > p.session_bytes:
                    why = f"the output budget of {p.session_bytes} bytes for this Keep session is spent"
                    return {"id": r.id, "state": "approved",
                            "notice": withheld_notice("output.session_bytes", why)[1]["text"]}
                self.session_used += size
                r.delivered = True
                self.audit("release", {"digest": r.digest, "type": r.rtype, "bytes": size,
                                       "note": r.note, "review": r.id})
        return {"id": r.id, "state": "approved", "data": r.rendered, "metadata": meta}


class CellGate:
    """Every event of one cell passes :meth:`filter`; it returns what may leave the Keep."""

    def __init__(self, enforcer: Enforcer, source: str = "", digest: str = ""):
        self.e = enforcer
        self.source = source    # the cell's code: what a reviewing owner reads
        self.digest = digest
        self.used = 0
        self.withheld = 0
        self._noticed: set[str] = set()

    @property
    def p(self) -> OutputPolicy:
        """Read each time: a dataset uploaded mid-cell tightens the policy at once."""
        return self.e.policy

    # -- helpers
    def _withhold(self, rule: str, why: str, kind: str, digest: str) -> list[Notice]:
        self.withheld += 1
        self.e.audit("refusal", {"rule": rule, "output": kind, "digest": digest})
        if rule in self._noticed:
            return []
        self._noticed.add(rule)
        return [withheld_notice(rule, why)]

    def _charge(self, n: int) -> str | None:
        """The rule a further ``n`` bytes would break, or None (and the bytes are counted)."""
        p = self.p
        if p.cell_bytes and self.used + n > p.cell_bytes:
            return "output.cell_bytes"
        if p.session_bytes and self.e.session_used + n > p.session_bytes:
            return "output.session_bytes"
        self.used += n
        self.e.session_used += n
        return None

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
        digest = _digest(content)
        p = self.p
        if p.release_required:
            return self._withhold("release.required", "only values passed to "
                                  "keep.release(value, note=...) leave this Keep", kind, digest)
        if kind not in p.kinds:
            return self._withhold(f"output.kinds ({kind})", f"{kind} output is not allowed to "
                                  "leave this Keep", kind, digest)
        if kind in ("display_data", "execute_result"):
            data = content.get("data") if isinstance(content.get("data"), dict) else {}
            kept = {m: v for m, v in data.items() if self.p.allows_mime(str(m))}
            if not kept:
                return self._withhold("output.mime", f"none of the MIME types "
                                      f"{', '.join(sorted(map(str, data))) or '(none)'} is allowed",
                                      kind, digest)
            content = {**content, "data": kept}
        size = len(json.dumps(content, default=str))
        rule = self._charge(size)
        if rule:
            return self._withhold(rule, self._budget_why(rule), kind, digest)
        return [(kind, content)]

    def _error(self, content: dict) -> list[Notice]:
        full = {k: content.get(k) for k in ("ename", "evalue", "traceback")}
        digest = _digest(full)
        if self.p.errors == "full":
            self.e.audit("error", {"digest": digest, "shown": "full"})
            return [("error", content)]
        ename = str(content.get("ename", "Exception"))
        if ename not in _BUILTIN_ERRORS:
            ename = "Exception"
        eid = os.urandom(6).hex()
        self.e.audit("error", {"digest": digest, "shown": "type", "error_id": eid})
        text = (f"{ename} (error id {eid}): details withheld by policy: output.errors — "
                f"this Keep shows the exception type only")
        return [("error", {"ename": ename, "evalue": f"error id {eid} — details withheld by policy",
                           "traceback": [text]})]

    def _status(self, content: dict) -> dict:
        out: dict = {}
        for key, types in _STATUS_KEYS.items():
            v = content.get(key)
            if isinstance(v, types) and not (isinstance(v, bool) and types is int):
                out[key] = v
        if self.p.errors == "type" or self.p.release_required:
            if out.get("reason") not in _STATUS_REASONS:
                out["reason"] = "error" if not out.get("ok") else "ok"
            out.pop("exit_code", None)  # an exit code could carry data past the policy
        out["withheld"] = self.withheld
        return out

    def _release(self, content: dict) -> list[Notice]:
        """A value the cell passed to keep.release(): check it, render it ourselves."""
        value, note = content.get("value"), content.get("note")
        note = note if isinstance(note, str) else ""
        try:
            rtype, rendered, rows = check_value(value)
        except ValueError as exc:
            return self._withhold("release.types", f"the released value is not releasable: {exc}",
                                  "release", _digest(value))
        encoded = json.dumps(value, sort_keys=True, separators=(",", ":"))
        digest = "sha256:" + hashlib.sha256(encoded.encode()).hexdigest()
        p = self.p
        if rtype not in p.release_types:
            return self._withhold("release.types", f"a {rtype} may not be released (allowed: "
                                  f"{', '.join(p.release_types) or 'none'})", "release", digest)
        if len(encoded) > p.release_max_bytes:
            return self._withhold("release.max_bytes", f"the value is {len(encoded)} bytes, over "
                                  f"the limit of {p.release_max_bytes} per release", "release", digest)
        rendered = {m: v for m, v in rendered.items() if p.allows_mime(m)}
        if not rendered:
            return self._withhold("output.mime", "no allowed MIME type can show this value",
                                  "release", digest)
        if p.release_mode == "review":
            return self._review(value, rendered, rtype, note, digest)
        rule = self._charge(len(encoded))
        if rule:
            return self._withhold(rule, self._budget_why(rule), "release", digest)
        self.e.audit("release", {"digest": digest, "type": rtype, "bytes": len(encoded),
                                 "note": note[:512], **({"rows": rows} if rows is not None else {})})
        meta = {"keepbook": {"released": True, "type": rtype, "note": note[:512], "digest": digest}}
        return [("display_data", {"data": rendered, "metadata": meta})]


    def _review(self, value: Any, rendered: dict, rtype: str, note: str, digest: str) -> list[Notice]:
        """``[release] mode = "review"``: queue the value for its data owners; the analyst sees
        "pending", updated in place once they decide (Enforcer.review_outcomes)."""
        if self.e.reviews is None:
            return self._withhold("release.mode", "this Keep cannot queue releases for review",
                                  "release", digest)
        req = self.e.reviews.submit(value=value, rendered=rendered, rtype=rtype, note=note,
                                    source=self.source, cell_digest=self.digest,
                                    datasets=self.e.datasets())
        if isinstance(req, str):
            return self._withhold("release.mode", req, "release", digest)
        text = f"⏳ release #{req.id} is waiting for the data owner's review"
        return [("display_data", {"data": {"text/plain": text},
                                  "metadata": {"keepbook": {"review": {"id": req.id,
                                                                       "state": "pending"}}}})]

    def _answer(self, content: dict) -> list[Notice]:
        """A keep.dp / keep.query answer the trusted side computed and labelled: rendered here
        like a release, counted against the byte budgets (not subject to review: the owner's
        [dp] and [query] rules are what allows it)."""
        value, note = content.get("value"), str(content.get("note") or "")
        try:
            rtype, rendered, _ = check_value(value)
        except ValueError:
            return self._withhold("answer", "the trusted side made no showable answer", "answer",
                                  _digest(value))
        encoded = json.dumps(value, sort_keys=True, separators=(",", ":"))
        rendered = {m: v for m, v in rendered.items() if self.p.allows_mime(m)}
        if not rendered:
            return self._withhold("output.mime", "no allowed MIME type can show this answer",
                                  "answer", _digest(value))
        rule = self._charge(len(encoded))
        if rule:
            return self._withhold(rule, self._budget_why(rule), "answer", _digest(value))
        meta = {"keepbook": {"released": True, "type": rtype, "note": note,
                             **{k: v for k, v in (content.get("keepbook") or {}).items()
                                if k in ("dp", "query")}}}
        if "text/plain" in rendered:
            rendered["text/plain"] = f"{rendered['text/plain']}\n  [{note}]"
        return [("display_data", {"data": rendered, "metadata": meta})]


def _digest(value: Any) -> str:
    return "sha256:" + hashlib.sha256(json.dumps(value, sort_keys=True, default=str)
                                      .encode()).hexdigest()


