"""notebooks/ipython-habits.ipynb runs in keepbook with the same outputs as in ipykernel: display
objects, clear_output/update_display, %matplotlib inline, %time/%%time/%timeit/%%timeit,
%who/%whos, obj?/obj??, a trailing ';', IPython's pretty printer, %precision, %config, pandas'
notebook display settings, get_ipython().  Timings are the only text allowed to differ; cells
tagged ``keep-differs`` show the Keep's own answer (a Keep has no shell, its image is fixed)."""

from __future__ import annotations

import copy
import json
import re
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.slow
pytest.importorskip("matplotlib", reason="the ipykernel side needs matplotlib (pip install -e '.[test]')")
pytest.importorskip("pandas", reason="the ipykernel side needs pandas (pip install -e '.[test]')")

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "ipython-habits.ipynb"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_DURATION = re.compile(r"\d+(?:\.\d+)?\s*(?:ns|µs|μs|us|ms|s|min)\b")
_PROGRESS = ("… ", "✔ ", "✘ ")


@pytest.fixture(scope="module", autouse=True)
def kernelspec():
    from keepbook.kernel.kernelspec import install
    install(prefix=sys.prefix)


def _differs(cell) -> bool:
    return "keep-differs" in cell.get("metadata", {}).get("tags", [])


_CACHE_WARNING = re.compile(r"^The slowest run took .*\n", re.M)  # %timeit's noise remark


def _text(value) -> str:
    text = "".join(value) if isinstance(value, list) else str(value)
    return _CACHE_WARNING.sub("", _DURATION.sub("<time>", _ANSI.sub("", text)))


def _value(mime: str, value) -> str:
    if mime.startswith("image/") and mime != "image/svg+xml":
        return "<image>"  # rendered by different builds of libpng/zlib
    if mime == "application/json":  # an object's key order is not part of JSON (the Keep's
        return json.dumps(value, sort_keys=True)  # channel is canonical CBOR: keys sorted)
    return _text(value)


def _keepbooks_own(output) -> bool:
    """The kernel's own remarks: creating and attesting the Keep on the first cell."""
    if output.get("output_type") == "stream" and output.get("name") == "stderr":
        return all(line.startswith("[keepbook]") for line in output["text"].splitlines())
    plain = output.get("data", {}).get("text/plain", "")
    return output.get("output_type") == "display_data" and str(plain).startswith(_PROGRESS)


def _shown(output) -> tuple:
    """What a reader sees of one output: its kind and, per MIME type, its content."""
    kind = output["output_type"]
    if kind == "stream":
        return (kind, output["name"], _text(output["text"]))
    if kind == "error":
        return (kind, output["ename"], _text(output["evalue"]))
    data = {m: _value(m, v) for m, v in output.get("data", {}).items()}
    return (kind, tuple(sorted(data.items())))


def _run(nb, kernel_name: str):
    NotebookClient(nb, timeout=300, kernel_name=kernel_name,
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    return nb


def _outputs(cell) -> list[tuple]:
    merged: list = []
    for o in cell.get("outputs", []):
        if _keepbooks_own(o):
            continue
        if o["output_type"] == "stream" and merged and merged[-1]["output_type"] == "stream" \
                and merged[-1]["name"] == o["name"]:
            merged[-1] = {**merged[-1], "text": merged[-1]["text"] + o["text"]}
            continue
        merged.append(o)
    return [_shown(o) for o in merged]


@pytest.fixture(scope="module")
def both():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    reference = copy.deepcopy(nb)
    for cell in reference.cells:  # ipykernel would really run a shell and pip here
        if cell.cell_type == "code" and _differs(cell):
            cell.source = "pass"
    return _run(reference, "python3"), _run(nb, "keepbook")


def test_every_habit_shows_what_ipykernel_shows(both):
    reference, keep = both
    differ = []
    for i, (a, b) in enumerate(zip(reference.cells, keep.cells)):
        if a.cell_type != "code" or _differs(b):
            continue
        want, got = _outputs(a), _outputs(b)
        if want != got:
            differ.append(f"cell {i}: {b.source[:60]!r}\n  ipykernel: {want}\n  keepbook:  {got}")
    assert not differ, "\n".join(differ)


def test_the_keeps_own_answers_say_why(both):
    _reference, keep = both
    for cell in keep.cells:
        if cell.cell_type == "code" and _differs(cell):
            said = " ".join(_text(o.get("text", "")) for o in cell.outputs)
            assert cell.metadata["keepbook"]["expect"] in said, (cell.source, said)
            assert not [o for o in cell.outputs if o["output_type"] == "error"]


def test_habit_outputs_are_not_empty(both):
    """The comparison above is not vacuous: the cells did show things."""
    _reference, keep = both
    shown = [_outputs(c) for c in keep.cells if c.cell_type == "code" and not _differs(c)]
    kinds = {o[0] for outs in shown for o in outs}
    assert {"display_data", "execute_result", "stream"} <= kinds
    assert sum(1 for outs in shown if outs) >= 15
