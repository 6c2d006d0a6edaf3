"""The three ways out, in real Keeps (keepmgr → keepldr → wasmldr, Python in Wasm), from the
analyst's client and the owner's: a release in review mode reaches the analyst only after the
owner approved; a rejection never does; keep.dp and keep.query are answered by the trusted side
on a dataset the analyst's code cannot open, and the analyst's code cannot change their counts."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from keepbook.kernel.agent import ClientAgent, NewKeep
from keepbook.kernel.attestation import ExpectationBuilder
from keepbook.kernel.owner_review import OwnerSession, ReviewError
from keepbook.kernel.trust_policy import TrustPolicy

pytestmark = pytest.mark.slow

CSV = "patient,age,ward\n" + "".join(f"p{i},{20 + (i * 7) % 61},{'rare' if i < 3 else 'w' + str(i % 2)}\n"
                                     for i in range(200))
REVIEW = b'[release]\nmode = "review"\ntypes = ["number", "table"]\n'
QUERIES = b'[dp]\nepsilon = 1.0\ndelta = 1e-6\n[query]\nmin_group = 10\n[data]\naccess = "queries"\n'


def keep(manager, tmp_path, policy: bytes, owner, name="patients.csv") -> ClientAgent:
    tf = tmp_path / "token"
    tf.write_text(manager.token)
    data = tmp_path / name
    data.write_text(CSV)
    agent = ClientAgent()
    agent.call(agent.new_keep(NewKeep(backend="nil", profile="production", manager=manager.url,
                                      token_file=str(tf))))
    agent.call(agent.upload(data, name, policy=policy, owner_key=owner))
    return agent


def run(agent, code):
    events = []
    status = agent.call(agent.run("python", events.append, code=code), timeout=180)
    return events, status


def owner_session(agent, key) -> OwnerSession:
    expect = ExpectationBuilder().trust_policy(TrustPolicy(allow_nil=True, require_hardware=False,
                                                           allow_simulated=True)).profile("production")
    s = agent.current
    return agent.call(OwnerSession.attest(s.manager, s.id, expect, key))


@pytest.fixture(scope="module")
def owner():
    return ed25519.Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def review_keep(shared_manager, tmp_path_factory, owner):
    agent = keep(shared_manager, tmp_path_factory.mktemp("review"), REVIEW, owner)
    yield agent
    agent.stop()


def outcomes(agent, ids):
    return agent.call(agent.request("reviews", {"ids": ids}))["reviews"]


def test_release_reaches_the_analyst_only_after_the_owner_approves(review_keep, owner):
    events, status = run(review_keep, "import keep, pandas as pd\ndf = pd.read_csv('/data/patients.csv')\n"
                                      "keep.release(round(float(df.age.mean()), 2), note='mean age')")
    assert status["ok"]
    (pending,) = [e for e in events if e.kind == "display_data"]
    rid = pending.content["metadata"]["keepbook"]["review"]["id"]
    assert "waiting for the data owner" in pending.content["data"]["text/plain"]
    true_mean = f"{sum(20 + (i * 7) % 61 for i in range(200)) / 200:.2f}".rstrip("0")
    assert true_mean not in repr([e.content for e in events])
    assert outcomes(review_keep, [rid]) == [{"id": rid, "state": "pending"}]

    own = owner_session(review_keep, owner)
    shown = review_keep.call(own.show(rid))
    assert shown["text"] == true_mean and "df.age.mean()" in shown["source"]
    assert shown["datasets"] == ["patients.csv"]
    review_keep.call(own.decide(rid, "approve", shown["value_digest"]))
    (done,) = outcomes(review_keep, [rid])
    assert done["state"] == "approved" and done["data"]["text/plain"] == true_mean
    assert done["metadata"]["keepbook"]["note"] == "mean age"


def test_a_rejection_never_releases(review_keep, owner):
    events, _ = run(review_keep, "keep.release(int(df.age.max()), note='oldest')")
    rid = [e for e in events if e.kind == "display_data"][0].content["metadata"]["keepbook"]["review"]["id"]
    own = owner_session(review_keep, owner)
    shown = review_keep.call(own.show(rid))
    review_keep.call(own.decide(rid, "reject", shown["value_digest"], "an extreme identifies someone"))
    (done,) = outcomes(review_keep, [rid])
    assert done == {"id": rid, "state": "rejected", "reason": "an extreme identifies someone"}
    with pytest.raises(ReviewError, match="already rejected"):
        review_keep.call(own.decide(rid, "approve", shown["value_digest"]))
    assert "data" not in outcomes(review_keep, [rid])[0]


def test_a_stranger_cannot_approve(review_keep):
    events, _ = run(review_keep, "keep.release(len(df), note='rows')")
    rid = [e for e in events if e.kind == "display_data"][0].content["metadata"]["keepbook"]["review"]["id"]
    stranger = owner_session(review_keep, ed25519.Ed25519PrivateKey.generate())
    with pytest.raises(ReviewError, match="owns none of the datasets"):
        review_keep.call(stranger.decide(rid, "approve", "sha256:" + "0" * 64))
    assert outcomes(review_keep, [rid])[0]["state"] == "pending"
    log = review_keep.call(review_keep.audit())
    kinds = [r["kind"] for r in log.table()]
    assert "review-request" in kinds and "review-decision" in kinds and "owner-refused" in kinds


@pytest.fixture(scope="module")
def query_keep(shared_manager, tmp_path_factory, owner):
    agent = keep(shared_manager, tmp_path_factory.mktemp("queries"), QUERIES, owner)
    yield agent
    agent.stop()


def answers(events):
    return [e.content for e in events if e.kind == "display_data"]


def test_the_analysts_code_cannot_open_a_queries_only_dataset(query_keep):
    events, status = run(query_keep, "import os\nprint(os.listdir('/data') if os.path.isdir('/data') else [])\n"
                                     "open('/data/patients.csv')")
    assert not status["ok"]
    assert "p17" not in repr([e.content for e in events])


def test_dp_answers_come_from_the_trusted_side_and_the_budget_stops(query_keep):
    events, status = run(query_keep, "import keep\nn = keep.dp.count('patients.csv', epsilon=0.4)\n"
                                     "m = keep.dp.mean('patients.csv', 'age', bounds=(0, 100), epsilon=0.4)\n"
                                     "keep.release(round(m, 1), note='dp mean, post-processed')")
    assert status["ok"], events
    dp_answers = [a for a in answers(events) if "dp" in a["metadata"]["keepbook"]]
    assert len(dp_answers) == 2
    assert "OpenDP" in dp_answers[0]["metadata"]["keepbook"]["note"]
    assert abs(int(dp_answers[0]["data"]["text/plain"].split()[0]) - 200) < 40
    budget = query_keep.call(query_keep.budgets())["patients.csv"]
    assert budget["spent_epsilon"] == pytest.approx(0.8)
    events, status = run(query_keep, "keep.dp.sum('patients.csv', 'age', bounds=(0, 100), epsilon=0.5)")
    notes = [e.content["text"] for e in events if e.kind == "notice"]
    assert any("privacy budget is spent" in t for t in notes) and not status["ok"]
    assert query_keep.call(query_keep.budgets())["patients.csv"]["spent_epsilon"] == pytest.approx(0.8)
    log = query_keep.call(query_keep.audit())
    assert [r["kind"] for r in log.table()].count("dp-charge") == 2


def test_bounds_missing_and_bad_epsilon_are_refused(query_keep):
    for code, words in (("keep.dp.mean('patients.csv', 'age', bounds=None, epsilon=0.1)", "bounds are missing"),
                        ("keep.dp.count('patients.csv', epsilon=0)", "epsilon must be a number above 0")):
        events, status = run(query_keep, code)
        assert not status["ok"] and any(words in e.content.get("text", "") for e in events), events


def test_threshold_query_suppresses_small_groups_and_counts_cannot_be_forged(query_keep):
    events, status = run(query_keep, "t = keep.query('patients.csv', by='ward', mean='age')\n"
                                     "import _host, json\n"
                                     "_host.call(json.dumps({'op': 'display', 'data': {'text/plain': 'rare 3'}}).encode())")
    assert status["ok"], events
    (table,) = [a for a in answers(events) if "query" in a["metadata"]["keepbook"]]
    text = table["data"]["text/plain"]
    assert "w0" in text and "w1" in text and "rare" not in text
    assert "98" in text and "99" in text     # the file's counts: 197 rows in two wards
    assert "rare 3" not in repr(answers(events))


def test_one_name_is_one_dataset_whichever_its_access(query_keep, owner, tmp_path):
    """patients.csv is kept for trusted queries only; a readable file of the same name (or one
    under it, as a folder) would shadow it in what the notebook calls it: refused."""
    from keepbook.kernel.client import KeepError

    data = tmp_path / "other.csv"
    data.write_text("a\n1\n")
    for name in ("patients.csv", "patients.csv/inner.csv"):
        with pytest.raises(KeepError, match="/data/patients.csv exists already"):
            query_keep.call(query_keep.upload(data, name, owner_key=owner))
    log = query_keep.call(query_keep.audit())
    assert [r["kind"] for r in log.table()].count("upload-refused") >= 2
