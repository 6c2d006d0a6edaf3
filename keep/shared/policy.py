"""The data owner's output policy: one TOML format, per-profile defaults, and the engine that
enforces it inside the Keep.

Shared, sans-IO: the data owner writes it (``keepbook seal --policy``), the client shows it, and
the Keep enforces it — every event a cell produces passes the Keep's output gate
(:mod:`keepbook.keep.inside.output_gate`) before it goes on the attested channel; the kernel
never filters anything (it could not be trusted to).  The format (``docs/profiles-and-policy.md``)::

    [output]                     # what may leave without keep.release()
    kinds = ["stream", "display_data", "execute_result"]
    mime = ["text/plain", "text/html", "image/png"]      # "*" and "image/*" allowed
    errors = "full"              # "full" traceback, or "type": exception type + opaque id
    cell_bytes = 8388608         # per cell; 0 = no budget
    session_bytes = 0            # per Keep session; 0 = no budget
    introspection = "full"       # completion/inspection: "none" (the Keep's own vocabulary
                                 # only), "names" (session names, never values), "full"

    [release]                    # keep.release(value, note=...) in the guest
    required = false             # true: nothing but released values leaves
    mode = "gate"                # "gate": released at once if the rules pass; "review": each
                                 # release also waits for the data owner's approval
    types = ["number", "text", "list", "mapping", "table", "figure"]
    max_bytes = 65536            # per released value (its JSON encoding)

    [dp]                         # keep.dp.*: answered by the Keep's trusted side (OpenDP)
    epsilon = 1.0                # the budget of one analyst session (one Keep), per dataset
    delta = 1e-6
    rows_per_person = 1          # the privacy unit: how many rows one person may have

    [query]                      # keep.query(...): group-by computed by the Keep itself
    min_group = 10               # groups with fewer rows are not shown

    [data]                       # rules for sealed datasets carrying this policy
    profiles = ["debug", "staging", "production"]   # profiles the data may be opened in
    owners = []                  # accepted owner key fingerprints ("sha256:<hex>"); [] = any
    access = "files"             # "files": a read-only file the analyst's code reads at /data;
                                 # "queries": only keep.dp / keep.query read it (never the code)

Every key is optional; missing keys come from the Keep profile's default (``introspection``:
"none" where ``release.required`` is true, else "full").  A dataset's policy can only tighten
the Keep's (:meth:`OutputPolicy.meet`).  ``release.min_rows`` and ``release.count_column`` are
gone (see :data:`REMOVED_KEYS`): a policy that still has them is refused, so no policy silently
keeps a rule that checked nothing.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import html
import json
import math
import tomllib
from dataclasses import dataclass, replace
from typing import Any

from keepbook.keep.shared.facts import PROFILES

OUTPUT_KINDS = ("stream", "display_data", "execute_result")
RELEASE_TYPES = ("number", "text", "list", "mapping", "table", "figure")
ERROR_LEVELS = ("full", "type")
#: how keep.release leaves: at once when the rules pass, or after the data owner's approval
RELEASE_MODES = ("gate", "review")
#: who reads a dataset: the analyst's code (a file under /data), or only the trusted queries
DATA_ACCESS = ("files", "queries")
#: what completion and inspection may show, weakest first (``meet`` takes the earlier)
INTROSPECTION_LEVELS = ("none", "names", "full")
MAX_POLICY_BYTES = 256 * 1024
#: the longest note a release may carry (``keep.release(value, note=...)``)
NOTE_MAX_CHARS = 200
#: the largest privacy budget a policy may give (a larger one protects nothing)
MAX_EPSILON = 100.0
#: keys that were removed, and what to write instead (a policy that has one is refused)
REMOVED_KEYS = {
    ("release", "min_rows"): (
        "release.min_rows was removed: it checked the row counts the analyst's own code reports, "
        "so a cell that lied got its table out. Use [query] min_group = N: keep.query(...) "
        "computes each group's rows in the Keep itself and suppresses the small ones "
        "(docs/profiles-and-policy.md)"),
    ("release", "count_column"): (
        "release.count_column was removed with release.min_rows: use [query] min_group = N "
        "(keep.query counts the rows itself; docs/profiles-and-policy.md)"),
}


class PolicyError(ValueError):
    """The policy text is not a valid output policy; the message names the key."""


@dataclass(frozen=True)
class OutputPolicy:
    kinds: tuple[str, ...] = OUTPUT_KINDS
    mime: tuple[str, ...] = ("*",)
    errors: str = "full"
    cell_bytes: int = 0
    session_bytes: int = 0
    release_required: bool = False
    release_types: tuple[str, ...] = RELEASE_TYPES
    release_max_bytes: int = 1024 * 1024
    release_mode: str = "gate"
    #: [dp]: the per-session budget (epsilon 0 = no keep.dp answers), and the privacy unit
    dp_epsilon: float = 0.0
    dp_delta: float = 0.0
    dp_rows_per_person: int = 1
    #: [query] min_group: 0 = no keep.query answers
    query_min_group: int = 0
    introspection: str = "full"
    data_profiles: tuple[str, ...] = PROFILES
    data_owners: tuple[str, ...] = ()
    data_access: str = "files"
    source: str = "default"

    # ------------------------------------------------------------------ parse
    @classmethod
    def for_profile(cls, profile: str) -> "OutputPolicy":
        """The default when the data owner gave no policy (or left keys out)."""
        if profile not in PROFILES:
            raise PolicyError(f"unknown profile {profile!r}; known: {', '.join(PROFILES)}")
        if profile == "production":
            return cls(kinds=(), mime=("text/plain", "text/html", "image/png"), errors="type",
                       release_required=True, release_max_bytes=64 * 1024, introspection="none",
                       source="production default")
        return cls(source=f"{profile} default")

    @classmethod
    def parse(cls, text: bytes | str, profile: str, source: str = "policy") -> "OutputPolicy":
        """Parse TOML over ``profile``'s default.  Empty text → the default itself."""
        base = cls.for_profile(profile)
        if isinstance(text, bytes):
            if len(text) > MAX_POLICY_BYTES:
                raise PolicyError(f"{source}: {len(text)} bytes exceeds {MAX_POLICY_BYTES}")
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError:
                raise PolicyError(f"{source}: not UTF-8 text") from None
        if not text.strip():
            return base
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise PolicyError(f"{source}: not valid TOML: {exc}") from None
        sections = {"output", "release", "dp", "query", "data"}
        unknown = set(raw) - sections
        if unknown:
            raise PolicyError(f"{source}: unknown section(s) or key(s) {', '.join(sorted(unknown))}; "
                              f"known sections: [output], [release], [dp], [query], [data]")
        for name in sections & set(raw):
            if not isinstance(raw[name], dict):
                raise PolicyError(f"{source}: {name} must be a [{name}] table")
        for (section, key), why in REMOVED_KEYS.items():
            if key in raw.get(section, {}):
                raise PolicyError(f"{source}: {why}")
        out, rel, data = raw.get("output", {}), raw.get("release", {}), raw.get("data", {})
        dp, query = raw.get("dp", {}), raw.get("query", {})
        _known(source, "output", out, {"kinds", "mime", "errors", "cell_bytes", "session_bytes",
                                       "introspection"})
        _known(source, "release", rel, {"required", "mode", "types", "max_bytes"})
        _known(source, "dp", dp, {"epsilon", "delta", "rows_per_person"})
        _known(source, "query", query, {"min_group"})
        _known(source, "data", data, {"profiles", "owners", "access"})
        kw: dict[str, Any] = {"source": f"{source} over the {profile} default"}
        if "kinds" in out:
            kw["kinds"] = _choices(source, "output.kinds", out["kinds"], OUTPUT_KINDS)
        if "mime" in out:
            kw["mime"] = _strings(source, "output.mime", out["mime"])
            for m in kw["mime"]:
                if m != "*" and (m.count("/") != 1 or m.startswith("/") or len(m) > 128):
                    raise PolicyError(f"{source}: output.mime: {m!r} is not a MIME type or pattern")
        if "introspection" in out:
            if out["introspection"] not in INTROSPECTION_LEVELS:
                raise PolicyError(f"{source}: output.introspection must be one of "
                                  f"{', '.join(map(repr, INTROSPECTION_LEVELS))}")
            kw["introspection"] = out["introspection"]
        if "errors" in out:
            if out["errors"] not in ERROR_LEVELS:
                raise PolicyError(f"{source}: output.errors must be \"full\" or \"type\"")
            kw["errors"] = out["errors"]
        for key, name in (("cell_bytes", "cell_bytes"), ("session_bytes", "session_bytes")):
            if key in out:
                kw[name] = _count(source, f"output.{key}", out[key])
        if "required" in rel:
            if not isinstance(rel["required"], bool):
                raise PolicyError(f"{source}: release.required must be true or false")
            kw["release_required"] = rel["required"]
            if rel["required"] and "introspection" not in out:
                kw["introspection"] = "none"  # completion/inspection must not undo the rule
        if "types" in rel:
            kw["release_types"] = _choices(source, "release.types", rel["types"], RELEASE_TYPES)
        if "max_bytes" in rel:
            kw["release_max_bytes"] = _count(source, "release.max_bytes", rel["max_bytes"])
        if "mode" in rel:
            if rel["mode"] not in RELEASE_MODES:
                raise PolicyError(f"{source}: release.mode must be \"gate\" (released at once when "
                                  "the rules pass) or \"review\" (the data owner approves each)")
            kw["release_mode"] = rel["mode"]
        kw.update(_trusted_rules(source, dp, query))
        if "profiles" in data:
            kw["data_profiles"] = _choices(source, "data.profiles", data["profiles"], PROFILES)
        if "owners" in data:
            owners = _strings(source, "data.owners", data["owners"])
            for o in owners:
                if not (o.startswith("sha256:") and len(o) == 71 and _is_hex(o[7:])):
                    raise PolicyError(f"{source}: data.owners: {o!r} is not \"sha256:<64 hex>\" "
                                      "(the fingerprint `keepbook seal` prints)")
            kw["data_owners"] = owners
        if "access" in data:
            if data["access"] not in DATA_ACCESS:
                raise PolicyError(f"{source}: data.access must be \"files\" (the analyst's code "
                                  "reads it under /data) or \"queries\" (only keep.dp and "
                                  "keep.query read it)")
            kw["data_access"] = data["access"]
        if (dp or query) and kw.get("data_access", base.data_access) != "queries":
            raise PolicyError(f"{source}: [dp] and [query] answer only over data the analyst's code "
                              "cannot read (its own choice of query could carry rows out): add "
                              "access = \"queries\" to [data]")
        return replace(base, **kw)

    # ------------------------------------------------------------------ combine
    def meet(self, other: "OutputPolicy") -> "OutputPolicy":
        """The stricter of two policies, rule by rule (a dataset's policy joins the Keep's)."""
        return OutputPolicy(
            kinds=tuple(k for k in self.kinds if k in other.kinds),
            mime=_meet_mime(self.mime, other.mime),
            errors="type" if "type" in (self.errors, other.errors) else "full",
            cell_bytes=_min_budget(self.cell_bytes, other.cell_bytes),
            session_bytes=_min_budget(self.session_bytes, other.session_bytes),
            release_required=self.release_required or other.release_required,
            release_types=tuple(t for t in self.release_types if t in other.release_types),
            release_max_bytes=min(self.release_max_bytes, other.release_max_bytes),
            release_mode="review" if "review" in (self.release_mode, other.release_mode) else "gate",
            **_meet_dp(self, other),
            dp_rows_per_person=max(self.dp_rows_per_person, other.dp_rows_per_person),
            query_min_group=max(self.query_min_group, other.query_min_group),
            introspection=min(self.introspection, other.introspection, key=INTROSPECTION_LEVELS.index),
            data_profiles=self.data_profiles, data_owners=self.data_owners,
            data_access=self.data_access, source=f"{self.source} ∧ {other.source}")

    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(json.dumps(self.summary(), sort_keys=True).encode()).hexdigest()

    def summary(self) -> dict[str, Any]:
        return {"kinds": list(self.kinds), "mime": list(self.mime), "errors": self.errors,
                "cell_bytes": self.cell_bytes, "session_bytes": self.session_bytes,
                "release_required": self.release_required,
                "release_types": list(self.release_types),
                "release_max_bytes": self.release_max_bytes, "release_mode": self.release_mode,
                "dp": {"epsilon": self.dp_epsilon, "delta": self.dp_delta,
                       "rows_per_person": self.dp_rows_per_person},
                "query": {"min_group": self.query_min_group},
                "introspection": self.introspection}

    def allows_mime(self, mime: str) -> bool:
        for pat in self.mime:
            if pat == "*" or pat == mime or (pat.endswith("/*") and mime.startswith(pat[:-1])):
                return True
        return False


def _known(source: str, section: str, table: dict, keys: set[str]) -> None:
    extra = set(table) - keys
    if extra:
        raise PolicyError(f"{source}: unknown key(s) in [{section}]: {', '.join(sorted(extra))}; "
                          f"known: {', '.join(sorted(keys))}")


def _strings(source: str, name: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise PolicyError(f"{source}: {name} must be a list of strings")
    return tuple(value)


def _choices(source: str, name: str, value: Any, allowed: tuple[str, ...]) -> tuple[str, ...]:
    items = _strings(source, name, value)
    bad = [v for v in items if v not in allowed]
    if bad:
        raise PolicyError(f"{source}: {name}: unknown value(s) {', '.join(bad)}; "
                          f"allowed: {', '.join(allowed)}")
    return items


def _count(source: str, name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0 or value > 2**40:
        raise PolicyError(f"{source}: {name} must be a non-negative integer")
    return value


def _number(source: str, name: str, value: Any, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not low <= value <= high:
        raise PolicyError(f"{source}: {name} must be a number from {low:g} to {high:g}")
    return float(value)


def _trusted_rules(source: str, dp: dict, query: dict) -> dict[str, Any]:
    """The [dp] and [query] sections: the owner's budget and thresholds for the trusted side."""
    kw: dict[str, Any] = {}
    if dp:
        if "epsilon" not in dp:
            raise PolicyError(f"{source}: [dp] needs epsilon (the privacy budget of one analyst "
                              "session, e.g. epsilon = 1.0)")
        kw["dp_epsilon"] = _number(source, "dp.epsilon", dp["epsilon"], 0.0, MAX_EPSILON)
        if kw["dp_epsilon"] <= 0:
            raise PolicyError(f"{source}: dp.epsilon must be above 0 (leave [dp] out for no "
                              "differentially private answers)")
        kw["dp_delta"] = _number(source, "dp.delta", dp.get("delta", 0.0), 0.0, 0.01)
        if "rows_per_person" in dp:
            kw["dp_rows_per_person"] = _count(source, "dp.rows_per_person", dp["rows_per_person"])
            if not 1 <= kw["dp_rows_per_person"] <= 1_000_000:
                raise PolicyError(f"{source}: dp.rows_per_person must be from 1 to 1000000")
    if "min_group" in query:
        kw["query_min_group"] = _count(source, "query.min_group", query["min_group"])
        if kw["query_min_group"] < 2:
            raise PolicyError(f"{source}: query.min_group must be at least 2 (a group of one row "
                              "is that row)")
    return kw


def _is_hex(s: str) -> bool:
    try:
        bytes.fromhex(s)
        return True
    except ValueError:
        return False


def _meet_dp(a: "OutputPolicy", b: "OutputPolicy") -> dict[str, float]:
    """The stricter [dp] budget: a policy without [dp] (epsilon 0) says nothing about it."""
    given = [p for p in (a, b) if p.dp_epsilon > 0]
    if not given:
        return {"dp_epsilon": 0.0, "dp_delta": 0.0}
    return {"dp_epsilon": min(p.dp_epsilon for p in given),
            "dp_delta": min(p.dp_delta for p in given)}


def _min_budget(a: int, b: int) -> int:
    if a and b:
        return min(a, b)
    return a or b


def _meet_mime(a: tuple[str, ...], b: tuple[str, ...]) -> tuple[str, ...]:
    if "*" in a:
        return b
    if "*" in b:
        return a
    probe_a = OutputPolicy(mime=a)
    probe_b = OutputPolicy(mime=b)
    out = [m for m in a if (not m.endswith("/*") and probe_b.allows_mime(m))]
    out += [m for m in b if (not m.endswith("/*") and probe_a.allows_mime(m)) and m not in out]
    out += [m for m in a if m.endswith("/*") and m in b]
    return tuple(out)


# =========================================================================== released values
#
# The guest sends a released value as plain JSON (no reprs, no HTML): the Keep checks its shape
# and renders it itself, so a cell cannot smuggle markup or other types past the type rule.
#   {"type": "number", "value": 3.5}            {"type": "text", "value": "..."}
#   {"type": "list", "value": [1, "a", null]}   {"type": "mapping", "value": {"k": 1}}
#   {"type": "table", "columns": [...], "index": [...], "rows": [[...], ...]}
#   {"type": "figure", "png": "<base64>"}

_SCALAR = (int, float, str, bool, type(None))


def _scalar_ok(v: Any) -> bool:
    if isinstance(v, float) and not math.isfinite(v):
        return True  # NaN/inf are fine to show
    return isinstance(v, _SCALAR)


def _scalar_text(v: Any) -> str:
    if isinstance(v, float):
        return repr(round(v, 12)) if math.isfinite(v) else str(v)
    return "None" if v is None else str(v)


def check_value(value: Any) -> tuple[str, dict[str, str], int | None]:
    """(type, rendered MIME bundle, table row count) of a released value, or ValueError."""
    if not isinstance(value, dict) or not isinstance(value.get("type"), str):
        raise ValueError("malformed release")
    t = value["type"]
    if t == "number":
        v = value.get("value")
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError("a number release must carry a number")
        return t, {"text/plain": _scalar_text(v)}, None
    if t == "text":
        v = value.get("value")
        if not isinstance(v, str):
            raise ValueError("a text release must carry text")
        return t, {"text/plain": v}, None
    if t == "list":
        v = value.get("value")
        if not isinstance(v, list) or not all(_scalar_ok(x) for x in v):
            raise ValueError("a list release may hold only numbers, text, booleans and None")
        return t, {"text/plain": "[" + ", ".join(repr(x) if isinstance(x, str) else
                                                 _scalar_text(x) for x in v) + "]"}, None
    if t == "mapping":
        v = value.get("value")
        if not isinstance(v, dict) or not all(_scalar_ok(x) for x in v.values()):
            raise ValueError("a mapping release may hold only numbers, text, booleans and None")
        width = max((len(k) for k in v), default=0)
        return t, {"text/plain": "\n".join(f"{k:<{width}}  {_scalar_text(x)}"
                                           for k, x in v.items())}, None
    if t == "table":
        cols, index, rows = value.get("columns"), value.get("index"), value.get("rows")
        if not (isinstance(cols, list) and isinstance(index, list) and isinstance(rows, list)):
            raise ValueError("a table release needs columns, index and rows")
        if len(index) != len(rows) or not all(isinstance(r, list) and len(r) == len(cols)
                                              for r in rows):
            raise ValueError("a table release has ragged rows")
        if not all(_scalar_ok(x) for x in cols + index) or \
                not all(_scalar_ok(x) for r in rows for x in r):
            raise ValueError("table cells may hold only numbers, text, booleans and None")
        return t, _render_table(cols, index, rows), len(rows)
    if t == "figure":
        png = value.get("png")
        try:
            raw = base64.b64decode(png, validate=True) if isinstance(png, str) else b""
        except (binascii.Error, ValueError):
            raw = b""
        if not raw.startswith(b"\x89PNG\r\n\x1a\n"):
            raise ValueError("a figure release must carry a PNG image")
        return t, {"image/png": png, "text/plain": "<released figure>"}, None
    # the type's name is not repeated: the cell chose it (a class may be named after data)
    raise ValueError("keep.release takes numbers, text, lists, mappings, tables (pandas, numpy) "
                     "and matplotlib figures; this is none of them")


def _render_table(cols: list, index: list, rows: list) -> dict[str, str]:
    head = [""] + [_scalar_text(c) for c in cols]
    body = [[_scalar_text(i)] + [_scalar_text(x) for x in r] for i, r in zip(index, rows)]
    widths = [max(len(row[j]) for row in [head] + body) for j in range(len(head))]
    text = "\n".join("  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in [head] + body)
    esc = html.escape
    th = "".join(f"<th>{esc(c)}</th>" for c in head)
    tr = "".join("<tr><th>" + esc(r[0]) + "</th>" + "".join(f"<td>{esc(c)}</td>" for c in r[1:])
                 + "</tr>" for r in body)
    return {"text/plain": text,
            "text/html": f"<table class=\"dataframe\"><thead><tr>{th}</tr></thead><tbody>{tr}</tbody></table>"}
