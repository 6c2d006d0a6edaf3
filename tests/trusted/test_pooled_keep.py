"""A pooled Keep (``keepmgr --pool``) booted its Python session and its data folders before any
client existed. Data sealed for trusted queries only must stay out of that session's reach, as
in a Keep started for its client, and the trusted side must still answer in it."""

from __future__ import annotations

import time

import pytest

from keepbook.keep.shared import protocol
from tests.conftest import Manager
from tests.support.http import http
from tests.trusted.test_in_keep import QUERIES, answers, keep, run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pooled_query_keep(tmp_path_factory):
    from cryptography.hazmat.primitives.asymmetric import ed25519

    tmp = tmp_path_factory.mktemp("pooled")
    mgr = Manager(tmp, backends="nil", extra=["--pool", "1", "--pool-backends", "nil"])
    agent = None
    try:
        deadline = time.monotonic() + 90
        while True:  # the pooled Keep is booted, its spare Python session with it
            status, body = http("GET", mgr.url + "/v1/health")
            if status == 200 and protocol.Reply.from_cbor(body).content["pool"]["nil"]["ready"]:
                break
            assert time.monotonic() < deadline, "the pool never filled"
            time.sleep(0.1)
        agent = keep(mgr, tmp, QUERIES, ed25519.Ed25519PrivateKey.generate())
        assert any(e.get("event") == "pool-take" for e in _events(mgr)), \
            "the Keep did not come from the pool: this test would show nothing about pooled Keeps"
        yield agent
    finally:
        if agent is not None:
            agent.stop()
        mgr.stop()


def _events(mgr: Manager) -> list[dict]:
    import json

    out = []
    for line in mgr.log.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def test_the_pooled_session_cannot_reach_a_queries_only_dataset(pooled_query_keep):
    """As the analyst: every path out of /data the guest might try, and a search of every
    folder it can list, for the file's rows."""
    probe = (
        "import os\n"
        "found = []\n"
        "for p in ('/data/patients.csv', '/data/../trusted/patients.csv', '/trusted/patients.csv',\n"
        "          '../trusted/patients.csv', '/data/../../trusted/patients.csv'):\n"
        "    try:\n"
        "        found.append(open(p).read(64))\n"
        "    except Exception:\n"
        "        pass\n"
        "for top in ('/', '/data', '/tmp'):\n"
        "    for d, _dirs, files in os.walk(top):\n"
        "        for f in files:\n"
        "            try:\n"
        "                if b'p17,' in open(os.path.join(d, f), 'rb').read(1 << 20):\n"
        "                    found.append(os.path.join(d, f))\n"
        "            except Exception:\n"
        "                pass\n"
        "if found:\n"
        "    raise SystemExit(3)\n"
    )
    events, status = run(pooled_query_keep, probe)
    assert status["ok"], (status, events)   # nothing found: the probe ends normally
    assert "p17" not in repr([e.content for e in events])


def test_the_pooled_session_gets_trusted_answers(pooled_query_keep):
    events, status = run(pooled_query_keep,
                         "import keep\nn = keep.dp.count('patients.csv', epsilon=0.5)\n")
    assert status["ok"], events
    (answer,) = [a for a in answers(events) if "dp" in a["metadata"]["keepbook"]]
    assert abs(int(answer["data"]["text/plain"].split()[0]) - 200) < 40
    budget = pooled_query_keep.call(pooled_query_keep.budgets())["patients.csv"]
    assert budget["spent_epsilon"] == pytest.approx(0.5)
