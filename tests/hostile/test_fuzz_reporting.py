"""A fuzzer that finds something says so loudly, with the input (issue 12, item 11): the
fuzz run of `make stress` once found a 500 and the report did not show what caused it."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from keepbook.keep.shared import protocol as p
from tests.hostile import mutations as mu

ROOT = Path(__file__).resolve().parents[2]


def test_a_5xx_names_the_request_and_saves_the_body():
    body = p.dumps({"v": 1, "msg": "run", "kind": "k" * 100})
    with pytest.raises(AssertionError) as exc:
        mu.assert_clean_refusal(500, b"Server got itself in trouble",
                                request=("POST", "/v1/run", p.CBOR, body), target="unit")
    text = str(exc.value)
    assert "status 500" in text and "FOUND BY FUZZING: POST /v1/run" in text and "'kind'" in text
    saved = Path(text.split("input saved: ")[1].split(" ")[0])
    assert saved.read_bytes() == body
    saved.unlink()
    saved.with_suffix(".txt").unlink()


def test_the_fuzz_runner_reports_the_crashing_input(tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT / "tools" / "fuzz"))
    try:
        import run as fuzz_run
    finally:
        sys.path.pop(0)
    harness = tmp_path / "fuzz_broken.py"
    harness.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT / 'tools' / 'fuzz')!r})
        from common import Stats, fuzz

        stats = Stats("broken")

        def test_one_input(data):
            stats.count(True)
            raise AssertionError("the property broke")

        if __name__ == "__main__":
            fuzz(test_one_input, stats)
    """))
    monkeypatch.setattr(fuzz_run, "HERE", tmp_path)
    monkeypatch.setattr(fuzz_run, "OUT", tmp_path / "out")
    (tmp_path / "out").mkdir()
    row = fuzz_run.run_target("broken", "fuzz_broken.py", [], 50, 30)
    assert row["crashed"]
    assert "the property broke" in row["reason"] or "AssertionError" in row["reason"]
    assert "input:" in row["reason"], row["reason"]
    crash = next((tmp_path / "out").glob("crash-fuzz_broken-*"))
    assert crash.stat().st_size > 0
