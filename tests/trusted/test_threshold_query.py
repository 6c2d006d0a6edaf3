"""keep.query on the trusted side: group-by computed from the dataset itself, small groups
suppressed; the counts are the file's, whatever the analyst's code would claim."""

from __future__ import annotations

import pytest

from keepbook.keep.inside.trusted import TrustedQueries
from keepbook.keep.shared.policy import OutputPolicy


@pytest.fixture()
def service(tmp_path):
    rows = [("a", 30)] * 12 + [("b", 50)] * 11 + [("rare", 99)] * 2
    (tmp_path / "w.csv").write_text("ward,age\n" + "".join(f"{w},{a}\n" for w, a in rows))
    t = TrustedQueries(OutputPolicy.for_profile("production"))
    t.add("w.csv", str(tmp_path / "w.csv"), "sha256:w", "sha256:o",
          OutputPolicy.parse('[query]\nmin_group = 10\n[data]\naccess = "queries"', "production"))
    return t


def test_small_groups_are_suppressed_and_counts_are_the_files(service):
    a = service.answer({"kind": "aggregate", "dataset": "w.csv", "by": "ward", "mean": ["age"]})
    assert a.ok
    assert a.value == {"columns": ["n", "mean(age)"], "index": ["a", "b"],
                       "rows": [[12, 30.0], [11, 50.0]]}
    assert "rare" not in repr(a.release) and "99" not in repr(a.release["value"])
    assert "fewer than 10 rows are not shown" in a.release["note"]


def test_a_query_without_the_owners_minimum_is_refused(tmp_path):
    (tmp_path / "x.csv").write_text("g\na\n")
    t = TrustedQueries(OutputPolicy.for_profile("production"))
    t.add("x.csv", str(tmp_path / "x.csv"), "sha256:x", "sha256:o",
          OutputPolicy.parse('[dp]\nepsilon = 1\n[data]\naccess = "queries"', "production"))
    a = t.answer({"kind": "aggregate", "dataset": "x.csv", "by": "g"})
    assert not a.ok and "[query] min_group" in a.reason


@pytest.mark.parametrize("query, words", [
    ({"kind": "aggregate", "dataset": "w.csv", "by": []}, "by must name 1 to"),
    ({"kind": "aggregate", "dataset": "w.csv", "by": "ward", "count": False}, "ask for something"),
    ({"kind": "aggregate", "dataset": "w.csv", "by": "nope"}, "no column 'nope'"),
    ({"kind": "aggregate", "dataset": "w.csv", "by": "ward", "where": "age > 3"}, "unknown field"),
])
def test_malformed_queries(service, query, words):
    a = service.answer(query)
    assert not a.ok and words in a.reason
