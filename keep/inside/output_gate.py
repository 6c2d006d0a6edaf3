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
from typing import Any, Callable

from keepbook.keep.shared.policy import OutputPolicy, check_value

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

    def __init__(self, policy: OutputPolicy, profile: str, audit: AuditHook | None = None):
        self.policy = policy
        self.profile = profile
        self.session_used = 0
        self.audit = audit or (lambda kind, entry: None)

    def tighten(self, other: OutputPolicy) -> None:
        self.policy = self.policy.meet(other)

    def cell(self) -> "CellGate":
        return CellGate(self)


class CellGate:
    """Every event of one cell passes :meth:`filter`; it returns what may leave the Keep."""

    def __init__(self, enforcer: Enforcer):
        self.e = enforcer
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
        rule = self._charge(len(encoded))
        if rule:
            return self._withhold(rule, self._budget_why(rule), "release", digest)
        self.e.audit("release", {"digest": digest, "type": rtype, "bytes": len(encoded),
                                 "note": note[:512], **({"rows": rows} if rows is not None else {})})
        meta = {"keepbook": {"released": True, "type": rtype, "note": note[:512], "digest": digest}}
        return [("display_data", {"data": rendered, "metadata": meta})]


def _digest(value: Any) -> str:
    return "sha256:" + hashlib.sha256(json.dumps(value, sort_keys=True, default=str)
                                      .encode()).hexdigest()


