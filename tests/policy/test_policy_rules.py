"""The output policy: parsing, per-profile defaults, combining, and the gate every event passes
in the Keep (keep/shared/policy.py).  Each rule is shown to withhold, with the notice the user sees."""

from __future__ import annotations

import base64

import pytest

from keepbook.keep.inside.output_gate import Enforcer
from keepbook.keep.shared.policy import OutputPolicy, PolicyError, check_value

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 20).decode()


def gate(text: str = "", profile: str = "production", audit=None):
    return Enforcer(OutputPolicy.parse(text, profile), profile, audit).cell()


def notices(out):
    return [c["text"] for k, c in out if k == "notice"]


def table(rows, cols=("group", "n", "mean")):
    return {"type": "table", "columns": list(cols), "index": list(range(len(rows))), "rows": rows}


# ------------------------------------------------------------------ parsing


def test_profile_defaults():
    prod = OutputPolicy.for_profile("production")
    assert prod.release_required and prod.errors == "type" and prod.kinds == ()
    for p in ("debug", "staging"):
        d = OutputPolicy.for_profile(p)
        assert not d.release_required and d.errors == "full" and "stream" in d.kinds


def test_empty_policy_is_the_profile_default():
    assert OutputPolicy.parse(b"", "production").summary() == OutputPolicy.for_profile("production").summary()


def test_policy_overrides_the_default_key_by_key():
    p = OutputPolicy.parse(b'[release]\nmode = "review"\n[output]\ncell_bytes = 100\n', "production")
    assert p.release_mode == "review" and p.cell_bytes == 100 and p.release_required


@pytest.mark.parametrize("key", ["min_rows = 5", "count_column = 'n'"])
def test_the_removed_min_rows_rule_is_refused_naming_what_replaced_it(key):
    """No policy silently keeps a rule that checked nothing: min_rows trusted the counts the
    analyst's own code reported."""
    with pytest.raises(PolicyError) as exc:
        OutputPolicy.parse(f"[release]\n{key}\n", "production", "owner.toml")
    text = str(exc.value)
    assert "owner.toml" in text and "was removed" in text and "[query] min_group" in text


def test_dp_and_query_sections():
    p = OutputPolicy.parse('[dp]\nepsilon = 1.5\ndelta = 1e-6\nrows_per_person = 3\n'
                           '[query]\nmin_group = 12\n[data]\naccess = "queries"', "production")
    assert (p.dp_epsilon, p.dp_delta, p.dp_rows_per_person) == (1.5, 1e-6, 3)
    assert p.query_min_group == 12 and p.data_access == "queries"
    assert p.summary()["dp"] == {"epsilon": 1.5, "delta": 1e-6, "rows_per_person": 3}


def test_meet_of_dp_budgets_is_the_smaller_and_a_policy_without_dp_says_nothing():
    base = OutputPolicy.for_profile("production")
    a = OutputPolicy.parse('[dp]\nepsilon = 2.0\ndelta = 1e-5\n[data]\naccess = "queries"', "production")
    b = OutputPolicy.parse('[dp]\nepsilon = 1.0\n[query]\nmin_group = 5\n[data]\naccess = "queries"',
                           "production")
    assert (base.meet(a).dp_epsilon, base.meet(a).dp_delta) == (2.0, 1e-5)
    m = a.meet(b)
    assert (m.dp_epsilon, m.dp_delta, m.query_min_group) == (1.0, 0.0, 5)
    assert a.meet(OutputPolicy.parse('[release]\nmode = "review"', "production")).release_mode == "review"


@pytest.mark.parametrize("text, words", [
    ("[output]\nkinds = ['stdout']", "output.kinds: unknown value(s) stdout"),
    ("[release]\nmode = 'ask'", "release.mode must be \"gate\""),
    ("[dp]\nepsilon = 1", "add access = \"queries\" to [data]"),
    ("[dp]\ndelta = 0.0\n[data]\naccess = 'queries'", "[dp] needs epsilon"),
    ("[dp]\nepsilon = 0\n[data]\naccess = 'queries'", "dp.epsilon must be above 0"),
    ("[dp]\nepsilon = -1\n[data]\naccess = 'queries'", "dp.epsilon must be a number from 0"),
    ("[dp]\nepsilon = 1\ndelta = 0.5\n[data]\naccess = 'queries'", "dp.delta must be a number"),
    ("[query]\nmin_group = 1\n[data]\naccess = 'queries'", "query.min_group must be at least 2"),
    ("[data]\naccess = 'everyone'", "data.access must be"),
    ("[release]\nrequired = 'yes'", "release.required must be true or false"),
    ("[output]\nerrors = 'some'", "output.errors"),
    ("[outputs]\n", "unknown section(s) or key(s) outputs"),
    ("[release]\nmin_row = 3", "unknown key(s) in [release]: min_row"),
    ("[data]\nowners = ['bob']", "data.owners"),
    ("[output", "not valid TOML"),
])
def test_bad_policies_name_the_key(text, words):
    with pytest.raises(PolicyError) as exc:
        OutputPolicy.parse(text, "staging", "owner.toml")
    assert words in str(exc.value) and "owner.toml" in str(exc.value)


def test_meet_is_the_stricter_rule_by_rule():
    keep = OutputPolicy.parse("[output]\ncell_bytes = 1000", "staging")
    owner = OutputPolicy.parse("[release]\nrequired = true\nmode = 'review'\ntypes = ['number', 'table']\n"
                               "[output]\nerrors = 'type'\ncell_bytes = 5000\nmime = ['text/plain']",
                               "staging")
    m = keep.meet(owner)
    assert m.release_required and m.release_mode == "review" and m.errors == "type"
    assert m.cell_bytes == 1000 and m.release_types == ("number", "table") and m.mime == ("text/plain",)
    assert keep.meet(owner).summary() == owner.meet(keep).summary()


# ------------------------------------------------------------------ the gate


def test_production_withholds_everything_not_released():
    g = gate()
    for kind, content in (("stream", {"name": "stdout", "text": "row 1: alice"}),
                          ("execute_result", {"data": {"text/plain": "df"}, "metadata": {}}),
                          ("display_data", {"data": {"text/html": "<b>x</b>"}, "metadata": {}})):
        out = g.filter(kind, content)
        assert all(k == "notice" for k, _ in out)
    assert g.withheld is True
    # one notice per rule per cell, not a flood
    texts = notices(g.filter("stream", {"name": "stdout", "text": "x"}))
    assert texts == []


def test_release_allowed_is_rendered_by_the_keep():
    audit = []
    g = gate(audit=lambda k, d: audit.append((k, d)))
    out = g.filter("release", {"value": {"type": "number", "value": 41.5}, "note": "mean age"})
    assert out[0][0] == "display_data"
    assert out[0][1]["data"] == {"text/plain": "41.5"}
    assert out[0][1]["metadata"]["keepbook"]["note"] == "mean age"
    assert audit[0][0] == "release" and audit[0][1]["note"] == "mean age"


def test_release_wrong_type():
    g = gate("[release]\ntypes = ['number']")
    out = g.filter("release", {"value": {"type": "text", "value": "alice"}, "note": ""})
    assert notices(out) == ["withheld by policy: release.types — a text may not be released "
                            "(allowed: number)"]


def test_release_of_an_unsupported_object():
    out = gate().filter("release", {"value": {"type": "builtins.object"}, "note": ""})
    assert notices(out)[0].startswith("withheld by policy: release.types — the released value is "
                                      "not releasable: keep.release takes numbers")
    # the type's name came from the cell (a class may be named after data): not repeated
    assert "builtins.object" not in notices(out)[0]


def test_release_over_max_bytes():
    g = gate("[release]\nmax_bytes = 50")
    out = g.filter("release", {"value": {"type": "text", "value": "x" * 100}, "note": ""})
    assert notices(out) == ["withheld by policy: release.max_bytes — the value (with its note) is "
                            "over the limit of 50 bytes per release"]  # its size is not said


def test_release_over_cell_budget_then_session_budget():
    g = gate("[output]\ncell_bytes = 100\nsession_bytes = 150")
    ok = g.filter("release", {"value": {"type": "text", "value": "a" * 40}, "note": ""})
    assert ok[0][0] == "display_data"  # 67 bytes encoded
    over = g.filter("release", {"value": {"type": "text", "value": "b" * 40}, "note": ""})
    assert notices(over) == ["withheld by policy: output.cell_bytes — the output budget of 100 "
                             "bytes for this cell is spent"]
    g2 = g.e.cell()  # next cell: a fresh cell budget, the session's is shared
    out = g2.filter("release", {"value": {"type": "text", "value": "c" * 60}, "note": ""})
    assert notices(out) == ["withheld by policy: output.session_bytes — the output budget of 150 "
                            "bytes for this Keep session is spent"]
    assert g2.filter("release", {"value": {"type": "number", "value": 1}, "note": ""})[0][0] == "display_data"


def test_table_html_is_escaped():
    g = gate("", profile="staging")
    out = g.filter("release", {"value": table([["<script>", 1, 2]]), "note": ""})
    assert "<script>" not in out[0][1]["data"]["text/html"]


def test_errors_type_only_with_opaque_id():
    g = gate()
    out = g.filter("error", {"ename": "ValueError", "evalue": "patient alice is 42",
                             "traceback": ["...alice..."]})
    (kind, content), = out
    assert kind == "error" and content["ename"] == "ValueError"
    assert "alice" not in repr(content) and "error id" in content["evalue"]


def test_cell_defined_exception_names_cannot_carry_data():
    out = gate().filter("error", {"ename": "Secret_alice_42", "evalue": "", "traceback": []})
    assert out[0][1]["ename"] == "Exception"


def test_status_in_production_carries_no_cell_data():
    g = gate()
    st = dict(g.filter("status", {"ok": True, "reason": "exit", "exit_code": 42,
                                  "elapsed_s": 0.1, "secret": "x"}))["status"]
    assert "exit_code" not in st and "secret" not in st and st["withheld"] == 0


def test_staging_lets_outputs_through_but_filters_mime():
    g = gate("[output]\nmime = ['text/plain']", profile="staging")
    out = g.filter("display_data", {"data": {"text/plain": "x", "text/html": "<b>x</b>"}, "metadata": {}})
    assert out == [("display_data", {"data": {"text/plain": "x"}, "metadata": {}})]
    out = g.filter("display_data", {"data": {"image/png": PNG}, "metadata": {}})
    assert notices(out)[0].startswith("withheld by policy: output.mime")


def test_kinds_rule():
    g = gate("[output]\nkinds = ['execute_result']", profile="staging")
    assert notices(g.filter("stream", {"name": "stdout", "text": "x"}))[0].startswith(
        "withheld by policy: output.kinds (stream)")


def test_tightening_applies_to_a_running_cell():
    e = Enforcer(OutputPolicy.for_profile("staging"), "staging")
    g = e.cell()
    assert g.filter("stream", {"name": "stdout", "text": "x"})[0][0] == "stream"
    e.tighten(OutputPolicy.parse("[release]\nrequired = true", "staging"))
    assert g.filter("stream", {"name": "stdout", "text": "x"})[0][0] == "notice"


@pytest.mark.parametrize("value", [
    {"type": "number", "value": "1"}, {"type": "number", "value": True},
    {"type": "list", "value": [[1]]}, {"type": "mapping", "value": {"a": [1]}},
    {"type": "table", "columns": ["a"], "index": [0], "rows": [[1, 2]]},
    {"type": "figure", "png": base64.b64encode(b"GIF89a").decode()},
    "42", None,
])
def test_malformed_releases_are_refused(value):
    with pytest.raises(ValueError):
        check_value(value)


# ------------------------------------------------------------------ IPython's display events


@pytest.mark.parametrize("kind,content", [
    ("update_display_data", {"data": {"text/plain": "v2"}, "metadata": {},
                             "transient": {"display_id": "d"}}),
    ("clear_output", {"wait": False}),
    ("page", {"data": {"text/plain": "Type: list"}, "start": 0}),
])
def test_display_updates_clears_and_pages_are_display_output(kind, content):
    out = gate(profile="production").filter(kind, content)
    assert [k for k, _ in out] == ["notice"] and "release.required" in notices(out)[0]
    assert gate(profile="staging").filter(kind, content) == [(kind, content)]
    no_display = gate('[output]\nkinds = ["stream"]\n', profile="staging").filter(kind, content)
    assert "output.kinds (display_data)" in notices(no_display)[0]


def test_an_update_keeps_to_the_allowed_mime_types():
    g = gate('[output]\nmime = ["text/plain"]\n', profile="staging")
    out = g.filter("update_display_data", {"data": {"text/html": "<b>x</b>", "text/plain": "x"},
                                           "metadata": {}, "transient": {"display_id": "d"}})
    assert out == [("update_display_data", {"data": {"text/plain": "x"}, "metadata": {},
                                            "transient": {"display_id": "d"}})]
