"""Completion and inspection, as the output gate answers them — in the Keep's own process,
outside the cell's interpreter.

The cell's interpreter is the analyst's: a cell can replace the guest's completion or
inspection helper, or fill its namespace with names built from data
(``globals()['x_' + ssn] = 1``).  So what a reply may carry is decided here, by the owner's
policy (``[output] introspection``), from the code the user typed — never from what the
guest claims:

* ``none`` (the production default): the guest is not asked at all; completion offers only
  the Keep's own vocabulary (Python keywords, builtins, ``keep``), inspection is withheld.
* ``names``: completion offers the session's names, each checked here to be a dotted
  identifier continuing what the user typed, bounded in number and length, and charged to the
  output budget; inspection is withheld (it shows values: reprs, docstrings, defaults).
* ``full``: the guest's reply, checked for shape, MIME types filtered, charged.
"""

from __future__ import annotations

import builtins
import json
import keyword
import re
from typing import Any, Callable

MAX_MATCHES = 200
MAX_NAME = 128
MAX_INSPECT_TEXT = 64 * 1024
_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
#: the Keep's own vocabulary: known without looking into any session
VOCABULARY = tuple(sorted(set(keyword.kwlist) | {n for n in dir(builtins) if not n.startswith("_")}
                          | {"keep"}))

Ask = Callable[[], "dict | None"]
Charge = Callable[[int], "str | None"]


def token_at(code: str, pos: int) -> tuple[int, str]:
    """(start, token): the dotted name that ends at the cursor."""
    start = pos
    while start > 0 and (code[start - 1].isalnum() or code[start - 1] in "_."):
        start -= 1
    return start, code[start:pos]


def _reply(matches: list[str], start: int, pos: int, **metadata: Any) -> dict:
    return {"status": "ok", "matches": matches, "cursor_start": start, "cursor_end": pos,
            "metadata": metadata}


def vocabulary_completion(code: str, pos: int, why: str) -> dict:
    """Completion from the Keep's own vocabulary only (``introspection = "none"``)."""
    start, token = token_at(code, pos)
    matches = [] if "." in token else [n for n in VOCABULARY if n.startswith(token)]
    return _reply(matches, start, pos, keepbook=why)


def checked_names(reply: Any, code: str, pos: int) -> tuple[int, list[str]]:
    """(start, matches): the guest's matches that are dotted identifiers continuing the typed
    token — the whole dotted name, or its last parts when the guest says its replacement starts
    inside the token (IPython completes ``df.ci`` as ``.city`` from the dot); the rest —
    values, markup, anything that is not a name — dropped."""
    start, _ = token_at(code, pos)
    raw = reply.get("matches") if isinstance(reply, dict) else None
    if not isinstance(raw, list):
        return start, []
    given = reply.get("cursor_start")
    if isinstance(given, int) and not isinstance(given, bool) and start <= given <= pos:
        start = given
    token = code[start:pos]
    out: list[str] = []
    for m in raw[:MAX_MATCHES * 4]:
        name = m[1:] if isinstance(m, str) and m.startswith(".") and token.startswith(".") else m
        if isinstance(m, str) and len(m) <= MAX_NAME and _DOTTED.match(name) and m.startswith(token) \
                and m not in out:
            out.append(m)
        if len(out) == MAX_MATCHES:
            break
    return start, out


def completion(level: str, code: str, pos: int, ask: Ask, charge: Charge) -> dict:
    """The completion reply that may leave the Keep at ``level``."""
    if level == "none":
        return vocabulary_completion(code, pos, "withheld by policy: output.introspection — "
                                     "completion offers keywords and builtins only")
    start, matches = checked_names(ask(), code, pos)
    rule = charge(len(json.dumps(matches)))
    if rule:
        return vocabulary_completion(code, pos, f"withheld by policy: {rule} — the output "
                                     "budget is spent")
    return _reply(matches, start, pos)


def withheld_inspection(rule: str, why: str) -> dict:
    return {"status": "ok", "found": True, "metadata": {},
            "data": {"text/plain": f"withheld by policy: {rule} — {why}"}}


def inspection(level: str, ask: Ask, charge: Charge, allows_mime: Callable[[str], bool]) -> dict:
    """The inspection reply that may leave the Keep at ``level``."""
    if level != "full":
        return withheld_inspection("output.introspection", "inspection shows values (reprs, "
                                   "docstrings, defaults), and this Keep's policy releases none")
    reply = ask()
    data = reply.get("data") if isinstance(reply, dict) else None
    if not isinstance(data, dict) or not reply.get("found"):
        return {"status": "ok", "found": False, "data": {}, "metadata": {}}
    kept = {str(m): v[:MAX_INSPECT_TEXT] for m, v in data.items()
            if isinstance(v, str) and allows_mime(str(m))}
    if not kept:
        return {"status": "ok", "found": False, "data": {}, "metadata": {}}
    rule = charge(len(json.dumps(kept)))
    if rule:
        return withheld_inspection(rule, "the output budget is spent")
    return {"status": "ok", "found": True, "data": kept, "metadata": {}}
