"""What the kernel answers by itself, on the user's machine, without running any cell code:
``is_complete`` (IPython's own parser: an open indented block is incomplete) and completion of
builtins, keywords and magic names before a Keep (or its Python session) exists.

Parsing only: ``TransformerManager.check_complete`` tokenises and compiles (never executes) the
cell; the magic names are read from IPython's Magics classes' tables, no shell is made here.
Names the user defined are known only to the Keep's session, which answers once it runs.
"""

from __future__ import annotations

import builtins
import functools
import inspect
import keyword

from keepbook.kernel import magics as mg


@functools.lru_cache(maxsize=1)
def _transformer():  # IPython's input transformer manager (syntax only)
    from IPython.core.inputtransformer2 import TransformerManager

    return TransformerManager()


def is_complete(code: str) -> dict:
    """Jupyter ``is_complete_reply`` content, as ipykernel answers it."""
    try:
        status, indent = _transformer().check_complete(code)
    except Exception:  # a parser failure is the user's cell being invalid, never a crash
        return {"status": "unknown"}
    if status == "incomplete":
        return {"status": "incomplete", "indent": " " * (indent or 0)}
    return {"status": status}


@functools.lru_cache(maxsize=1)
def ipython_magics() -> dict[str, tuple[str, ...]]:
    """The line and cell magic names of IPython's built-in Magics classes (the Keep's shell
    has these; some of them refuse with a reason there, e.g. ``%%bash``)."""
    import IPython.core.magics as classes

    names: dict[str, set[str]] = {"line": set(), "cell": set()}
    for _name, cls in inspect.getmembers(classes, inspect.isclass):
        table = getattr(cls, "magics", None)
        if isinstance(table, dict):
            for kind in names:
                names[kind].update(n for n in table.get(kind, {}) if n.isidentifier())
    names["cell"].update(("bash", "sh", "script", "perl", "ruby"))
    return {k: tuple(sorted(v)) for k, v in names.items()}


def magic_names(kind: str) -> list[str]:
    """keepbook's own magics first, then IPython's (``kind`` is "line" or "cell")."""
    own = mg.LINE_MAGICS if kind == "line" else mg.CELL_MAGICS
    return list(own) + [n for n in ipython_magics()[kind] if n not in own]


def _token_start(code: str, pos: int) -> int:
    start = pos
    while start > 0 and (code[start - 1].isalnum() or code[start - 1] == "_"):
        start -= 1
    return start


def complete_offline(code: str, cursor_pos: int) -> dict:
    """Builtins and keywords for the name at the cursor (nothing after a dot: attributes need
    the object, which lives in the Keep)."""
    start = _token_start(code, cursor_pos)
    word = code[start:cursor_pos]
    matches: list[str] = []
    if word and not (start > 0 and code[start - 1] == "."):
        names = set(dir(builtins)) | set(keyword.kwlist)
        matches = sorted(n for n in names if n.startswith(word)
                         and (word.startswith("_") or not n.startswith("_")))
    return {"status": "ok", "matches": matches, "cursor_start": start if matches else cursor_pos,
            "cursor_end": cursor_pos, "metadata": {}}
