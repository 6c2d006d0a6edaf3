"""keep.dp on the trusted side (keep/inside/trusted.py, dp_engine.py, budget.py): answers come
from OpenDP's measurements on the dataset's own file, each query is charged to the owner's
budget by basic composition, and the session stops at the limit — refusing, charging nothing."""

from __future__ import annotations

import statistics

import pytest

from keepbook.keep.inside import dp_engine
from keepbook.keep.inside.budget import Accountant, BudgetExceeded
from keepbook.keep.inside.trusted import TrustedQueries
from keepbook.keep.shared.policy import OutputPolicy

ROWS = 400
AGES = [20 + (i * 7) % 61 for i in range(ROWS)]   # 20..80, mean 50


@pytest.fixture()
def service(tmp_path):
    path = tmp_path / "people.csv"
    path.write_text("id,age,ward\n" + "".join(f"{i},{a},w{i % 4}\n" for i, a in enumerate(AGES)))
    log: list[tuple[str, dict]] = []
    t = TrustedQueries(OutputPolicy.for_profile("production"),
                       audit=lambda kind, entry: log.append((kind, entry)))
    owner = OutputPolicy.parse('[dp]\nepsilon = 1.0\ndelta = 1e-6\n[query]\nmin_group = 10\n'
                               '[data]\naccess = "queries"', "production")
    t.add("people.csv", str(path), "sha256:" + "ab" * 32, "sha256:" + "cd" * 32, owner)
    t.log = log  # type: ignore[attr-defined]
    return t


def dp(fn, eps, **kw):
    return {"kind": "dp", "fn": fn, "dataset": "people.csv", "epsilon": eps, **kw}


def test_answers_are_opendp_measurements_on_the_file(service, monkeypatch):
    """Every noisy answer is made by OpenDP: spy on its Laplace constructor."""
    import opendp.prelude as odp

    calls = []
    real = odp.m.then_laplace
    monkeypatch.setattr(odp.m, "then_laplace", lambda *a, **k: calls.append(k or a) or real(*a, **k))
    a = service.answer(dp("count", 0.5))
    assert a.ok and calls, "the count was not made by OpenDP's Laplace measurement"
    assert abs(a.value - ROWS) < 60          # ε=0.5: scale 2, far inside 60
    assert "OpenDP" in a.release["note"] and a.release["keepbook"]["dp"]["epsilon"] == 0.5


def test_answers_are_noisy_and_centred_on_the_truth(tmp_path):
    """Many independent sessions: the answers vary (noise) and centre on the true mean."""
    answers = []
    for i in range(25):
        path = tmp_path / f"p{i}.csv"
        path.write_text("age\n" + "".join(f"{a}\n" for a in AGES))
        t = TrustedQueries(OutputPolicy.for_profile("production"))
        t.add("p.csv", str(path), f"sha256:{i}", "sha256:o",
              OutputPolicy.parse('[dp]\nepsilon = 1\n[data]\naccess = "queries"', "production"))
        a = t.answer({"kind": "dp", "fn": "mean", "dataset": "p.csv", "column": "age",
                      "bounds": [0, 100], "epsilon": 1.0})
        answers.append(a.value)
    assert len(set(answers)) > 20                       # not one fixed number
    assert abs(statistics.mean(answers) - statistics.mean(AGES)) < 3


@pytest.mark.parametrize("fn, kw, check", [
    ("sum", {"column": "age", "bounds": [0, 100]}, lambda v: abs(v - sum(AGES)) < 2000),
    ("variance", {"column": "age", "bounds": [0, 100]}, lambda v: 0 <= v <= 2500),
    ("quantile", {"column": "age", "bounds": [0, 100], "q": 0.5}, lambda v: 0 <= v <= 100),
    ("histogram", {"column": "ward", "categories": ["w0", "w1"]},
     lambda v: set(v) == {"w0", "w1", "(other)"} and abs(v["(other)"] - 200) < 60),
    ("histogram", {"column": "age", "bins": [40, 60]}, lambda v: len(v) == 3),
])
def test_every_function(service, fn, kw, check):
    a = service.answer(dp(fn, 0.2, **kw))
    assert a.ok, a.reason
    assert check(a.value), a.value


def test_budget_composes_and_stops_at_the_limit(service):
    spent = 0.0
    for eps in (0.3, 0.3, 0.3):
        assert service.answer(dp("count", eps)).ok
        spent += eps
    left = service.budgets()["people.csv"]
    assert left["spent_epsilon"] == pytest.approx(spent) and left["queries"] == 3
    refused = service.answer(dp("count", 0.2))
    assert not refused.ok and "privacy budget is spent" in refused.reason
    assert "nothing was charged" in refused.reason
    assert service.budgets()["people.csv"]["spent_epsilon"] == pytest.approx(spent)
    assert service.answer(dp("count", 0.1)).ok   # exactly what is left still fits
    assert not service.answer(dp("count", 1e-6)).ok
    charges = [e for k, e in service.log if k == "dp-charge"]
    assert len(charges) == 4 and charges[-1]["remaining_epsilon"] == pytest.approx(0, abs=1e-12)


@pytest.mark.parametrize("query, words", [
    ({"kind": "dp", "fn": "mean", "dataset": "people.csv", "column": "age", "epsilon": 0.1},
     "bounds are missing"),
    (dp("sum", 0, column="age", bounds=[0, 1]), "epsilon must be a number above 0"),
    (dp("sum", -1.0, column="age", bounds=[0, 1]), "epsilon must be a number above 0"),
    (dp("count", None), "epsilon is missing"),
    (dp("median", 0.1, column="age"), "keep.dp has count, sum"),
    (dp("sum", 0.1, column="age", bounds=[5, 5]), "lower bound must be below"),
    (dp("sum", 0.1, column="salary", bounds=[0, 1]), "no column 'salary'"),
    (dp("histogram", 0.1, column="ward"), "give categories"),
    ({"kind": "dp", "fn": "count", "dataset": "other.csv", "epsilon": 0.1}, "no dataset 'other.csv'"),
    ("count everything", "a query must be a map"),
    (dp("count", 5.0), "privacy budget is spent"),
])
def test_bad_queries_are_refused_and_charge_nothing(service, query, words):
    a = service.answer(query)
    assert not a.ok and words in a.reason, a.reason
    assert service.budgets()["people.csv"]["spent_epsilon"] == 0


def test_no_answers_while_the_analyst_can_read_a_dataset(service, tmp_path):
    """In a Keep that restricts outputs, a readable dataset stops every trusted query: the
    query's own parameters could carry its rows out."""
    (tmp_path / "open.csv").write_text("a\n1\n")
    service.add("open.csv", str(tmp_path / "open.csv"), "sha256:e", "sha256:o",
                OutputPolicy.for_profile("production"))
    a = service.answer(dp("count", 0.1))
    assert not a.ok and "/data/open.csv" in a.reason and 'access = "queries"' in a.reason
    assert service.budgets()["people.csv"]["spent_epsilon"] == 0


def test_the_same_data_under_two_names_shares_one_budget(service, tmp_path):
    owner = OutputPolicy.parse('[dp]\nepsilon = 1.0\n[data]\naccess = "queries"', "production")
    path = service.datasets["people.csv"].path
    service.add("again.csv", path, "sha256:" + "ab" * 32, "sha256:o", owner)
    assert service.answer(dp("count", 0.8)).ok
    again = service.answer({**dp("count", 0.8), "dataset": "again.csv"})
    assert not again.ok and "budget is spent" in again.reason


def test_accountant_refuses_exactly_past_the_limit():
    acc = Accountant()
    acc.open("d", 1.0, 1e-6)
    for _ in range(10):
        acc.charge("d", 0.1, 0.0)
    with pytest.raises(BudgetExceeded):
        acc.charge("d", 1e-6, 0.0)   # ten times 0.1 is the whole budget: nothing more
    with pytest.raises(BudgetExceeded):
        acc.charge("d", 1e-9, 1e-5)  # δ too
    assert acc.budgets["d"].queries == 10


def test_plan_checks_opendps_privacy_map():
    from keepbook.keep.shared.queries import parse

    p = dp_engine.plan(parse(dp("mean", 0.4, column="age", bounds=[0, 100])), rows_per_person=2)
    assert p.epsilon == 0.4 and p.delta == 0 and p.mechanism.startswith("OpenDP ")


def test_no_answer_leaves_that_the_audit_log_cannot_record(service, monkeypatch):
    """A full log (append → False): keep.dp computes nothing and releases nothing — its ε
    counts as spent — and keep.query releases nothing."""
    service.audit = lambda kind, entry: False
    ran = []
    real = dp_engine.plan

    def spied(*args, **kw):
        p = real(*args, **kw)
        run = p.run
        p.run = lambda column: ran.append(1) or run(column)
        return p
    monkeypatch.setattr(dp_engine, "plan", spied)
    a = service.answer(dp("count", 0.25))
    assert not a.ok and a.release is None and "audit log is full" in a.reason and not ran
    assert service.budgets()["people.csv"]["spent_epsilon"] == 0.25
    q = service.answer({"kind": "aggregate", "dataset": "people.csv", "by": "ward"})
    assert not q.ok and q.release is None and "audit log is full" in q.reason
