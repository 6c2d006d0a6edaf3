"""`keepbook review`, the owner's terminal UI, against a real (simulated) Keep: one command at a
time and the prompt loop; approving shows the request first; a Keep the owner's expectations
refuse is never sent anything."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest

from keepbook.kernel import dataset_sealer
from keepbook.kernel.agent import ClientAgent, NewKeep
from keepbook.kernel import review_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world(shared_manager, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("review-cli")
    (tmp / "token").write_text(shared_manager.token)
    (tmp / "owner.pem").write_bytes(dataset_sealer.new_owner_key_pem())
    (tmp / "d.csv").write_text("a\n1\n2\n3\n")
    agent = ClientAgent()
    agent.call(agent.new_keep(NewKeep(backend="sim-snp", profile="production",
                                      manager=shared_manager.url, token_file=str(tmp / "token"))))
    agent.call(agent.upload(tmp / "d.csv", "d.csv", policy=b'[release]\nmode = "review"\n',
                            owner_key=str(tmp / "owner.pem")))
    status = agent.call(agent.run("python", lambda e: None, code="import keep\nkeep.release(6, note='sum')\n"
                                  "keep.release(3, note='max')"), timeout=180)
    assert status["ok"]
    base = ["--to", shared_manager.url, "--keep", agent.current.id, "--token-file", str(tmp / "token"),
            "--owner-key", str(tmp / "owner.pem"), "--allow-simulated"]
    yield agent, base
    agent.stop()


def review(base, *words, stdin=""):
    out = io.StringIO()
    rc = review_cli.main([*base, *words], stdin=io.StringIO(stdin), stdout=out)
    return rc, out.getvalue()


def test_list_show_and_approve_with_confirmation(world):
    agent, base = world
    rc, text = review(base, "list")
    assert rc == 0 and "#1  PENDING" in text and "#2  PENDING" in text and "note: sum" in text
    rc, text = review(base, "show", "1")
    assert "keep.release(6, note='sum')" in text and "value sha256:" in text
    rc, text = review(base, "approve", "1", stdin="n\n")
    assert rc == 1 and "not approved" in text
    rc, text = review(base, "approve", "1", stdin="y\n")
    assert rc == 0 and "#1 approved" in text
    (r,) = agent.call(agent.request("reviews", {"ids": [1]}))["reviews"]
    assert r["state"] == "approved" and r["data"]["text/plain"] == "6"


def test_the_prompt_loop_rejects_with_a_reason(world):
    agent, base = world
    rc, text = review(base, stdin="reject 2\nreject 2 too revealing\nlist\nquit\n")
    assert rc == 0 and "needs a reason" in text and "#2 rejected: too revealing" in text
    (r,) = agent.call(agent.request("reviews", {"ids": [2]}))["reviews"]
    assert r == {"id": 2, "state": "rejected", "reason": "too revealing"}


def test_hardware_only_owner_refuses_a_simulated_keep(world):
    agent, base = world
    strict = [w for w in base if w != "--allow-simulated"]
    proc = subprocess.run([sys.executable, "-m", "keepbook.cli", "review", *strict, "list"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "nothing was sent" in proc.stderr
