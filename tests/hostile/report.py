"""Tallies for the `make stress` summary.  Tests call :func:`record`; when
``KEEPBOOK_HOSTILE_REPORT`` names a file, each call appends one JSON line to it
(tools/stress.py reads them).  Outside `make stress` it costs nothing."""

from __future__ import annotations

import json
import os
import time

#: the categories of the summary table
CATEGORIES = ("inputs", "attack", "refused", "fault", "abuse", "load", "leak", "crash")


def record(category: str, name: str, *, ok: bool = True, count: int = 1, **detail: object) -> None:
    """``ok`` means the defence held (attack detected, fault survived, no leak, no crash)."""
    assert category in CATEGORIES, category
    path = os.environ.get("KEEPBOOK_HOSTILE_REPORT")
    if not path:
        return
    line = json.dumps({"t": round(time.time(), 3), "category": category, "name": name, "ok": ok,
                       "count": count, **detail}, default=str)
    with open(path, "a") as fh:
        fh.write(line + "\n")


STRESS = os.environ.get("KEEPBOOK_STRESS") == "1"
