"""Release rules enforced by a real Keep (keepmgr → keepldr → wasmldr, Python in Wasm): what the
notebook receives for an allowed release, an over-budget one and a wrong type."""

from __future__ import annotations

import pytest

from keepbook.kernel.agent import ClientAgent, NewKeep

POLICY = b"""
[output]
cell_bytes = 2000
[release]
types = ["number", "table", "mapping", "text"]   # text: notes may leave too
max_bytes = 1500
"""

SETUP = """
import keep, pandas as pd
df = pd.DataFrame({"ward": ["a"] * 6 + ["b"] * 2, "age": [30, 40, 50, 60, 70, 80, 20, 25]})
"""


@pytest.fixture(scope="module")
def keep_agent(shared_manager, tmp_path_factory):
    tf = tmp_path_factory.mktemp("tok") / "token"
    tf.write_text(shared_manager.token)
    agent = ClientAgent()
    agent.call(agent.new_keep(NewKeep(backend="nil", profile="production", manager=shared_manager.url,
                                      token_file=str(tf), policy=POLICY)))
    run(agent, SETUP)
    yield agent
    agent.stop()


def run(agent, code):
    events = []
    status = agent.call(agent.run("python", events.append, code=code), timeout=120)
    return events, status


def shown(events):
    return [(e.kind, e.content.get("text") or e.content.get("data", {}).get("text/plain")
             or e.content.get("evalue")) for e in events]


def notices(events):
    return [e.content["text"] for e in events if e.kind == "notice"]


def test_allowed_release_reaches_the_notebook(keep_agent):
    events, status = run(keep_agent, "keep.release(float(df.age.mean()), note='mean age')")
    assert status["ok"]
    (e,) = events
    assert e.kind == "display_data" and e.content["data"]["text/plain"] == "46.875"
    assert e.content["metadata"]["keepbook"]["note"] == "mean age"


def test_grouped_table_with_enough_rows(keep_agent):
    events, _ = run(keep_agent, "t = df.groupby('ward').agg(n=('age', 'size'), mean=('age', 'mean'))\n"
                                "keep.release(t[t.n >= 5], note='wards with >= 5 patients')")
    assert events[0].kind == "display_data" and "<table" in events[0].content["data"]["text/html"]


def test_wrong_type_is_withheld(keep_agent):
    events, status = run(keep_agent, "keep.release(list(df.age), note='raw ages')")
    assert notices(events) == ["withheld by policy: release.types — a list may not be released "
                               "(allowed: number, table, mapping, text)"]
    assert "30" not in repr(shown(events))
    assert status == {"ok": True, "reason": "ok", "withheld": True}  # no counts in production


def test_over_budget_is_withheld(keep_agent):
    events, _ = run(keep_agent, "keep.release({f'k{i}': i for i in range(250)}, note='big')\n"
                                "for j in range(3): keep.release({f'k{i}': i for i in range(150)}, note='x')")
    texts = notices(events)
    assert texts[0] == ("withheld by policy: release.max_bytes — the value (with its note) is "
                        "over the limit of 1500 bytes per release")
    assert any(t == "withheld by policy: output.cell_bytes — the output budget of 2000 bytes "
                    "for this cell is spent" for t in texts)


def test_printing_raw_rows_is_withheld(keep_agent):
    events, _ = run(keep_agent, "print(df.head())\ndf")
    assert notices(events) == ["withheld by policy: release.required — only values passed to "
                               "keep.release(value, note=...) leave this Keep"]
    assert all(e.kind == "notice" for e in events)


def test_bypassing_the_guest_module_does_not_help(keep_agent):
    """The policy is enforced outside the interpreter: calling the door directly is no way out."""
    events, _ = run(keep_agent, "import _host, json\n"
                                "_host.call(json.dumps({'op': 'stream', 'text': 'alice 42'}).encode())\n"
                                "_host.call(json.dumps({'op': 'display', 'data': {'text/html': 'alice'}}).encode())\n"
                                "_host.call(json.dumps({'op': 'release', 'value': {'type': 'list', "
                                "'value': ['alice']}}).encode())")
    assert "alice" not in repr([e.content for e in events])


def test_production_errors_show_type_and_id_only(keep_agent):
    events, status = run(keep_agent, "raise ValueError(f'patient {df.age[0]} is secret')")
    (err,) = [e for e in events if e.kind == "error"]
    assert err.content["ename"] == "ValueError" and "error id" in err.content["evalue"]
    assert "secret" not in repr(err.content) and not status["ok"]


def test_policy_in_force_is_reported(keep_agent):
    reply = keep_agent.call(keep_agent.request("policy"))
    assert reply["policy"]["release_max_bytes"] == 1500 and reply["policy"]["release_required"]
    assert "min_rows" not in reply["policy"]
