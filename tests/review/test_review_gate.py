"""The output gate's side of owner review and of trusted answers (keep/inside/output_gate.py
with keep/inside/review.py), without processes: a release under review leaves nothing but
"pending" until every owner approved; an approved value is charged and audited once; nothing is
queued, decided or delivered that the audit log cannot record; only the Keep labels outputs."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from keepbook.keep.inside.output_gate import Enforcer
from keepbook.keep.inside.review import DatasetRef
from keepbook.keep.shared.policy import OutputPolicy
from tests.review.test_owner_channel import Keep, ask, fingerprint

REVIEW = b'[release]\nmode = "review"\ntypes = ["number"]\n'


class Log:
    """An audit hook that can fill up, as the Keep's log does (append → False)."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, dict]] = []
        self.full = False

    def __call__(self, kind: str, entry: dict) -> bool:
        if self.full:
            return False
        self.entries.append((kind, entry))
        return True

    def kinds(self) -> list[str]:
        return [k for k, _ in self.entries]


@pytest.fixture()
def setup():
    owner = ed25519.Ed25519PrivateKey.generate()
    log = Log()
    keep = Keep()
    keep.queue.audit = log
    datasets = [DatasetRef("patients.csv", "hmac-sha256:d", fingerprint(owner))]
    enforcer = Enforcer(OutputPolicy.parse(REVIEW, "production"), "production", log,
                        reviews=keep.queue, datasets=lambda: datasets)
    return enforcer, keep, owner, log


def release(enforcer: Enforcer, value: float, note: str = "mean age") -> list:
    gate = enforcer.cell(source=f"keep.release({value})", digest="sha256:" + "1" * 64)
    return gate.filter("release", {"value": {"type": "number", "value": value}, "note": note})


def approve(keep: Keep, owner, rid: int) -> dict:
    shown = ask(keep, owner, "show", {"id": rid})["content"]["request"]
    return ask(keep, owner, "decide", {"id": rid, "decision": "approve",
                                       "value_digest": shown["value_digest"]})


def test_a_release_under_review_shows_only_pending_then_the_approved_value_once(setup):
    enforcer, keep, owner, log = setup
    ((kind, pending),) = release(enforcer, 42.5)
    rid = pending["metadata"]["keepbook"]["review"]["id"]
    assert kind == "display_data" and "42.5" not in repr(pending)
    assert enforcer.session_used == 0  # nothing released yet, nothing charged
    assert enforcer.review_outcomes([rid]) == [{"id": rid, "state": "pending"}]
    assert approve(keep, owner, rid)["ok"]
    (out,) = enforcer.review_outcomes([rid])
    assert out["data"]["text/plain"] == "42.5" and out["metadata"]["keepbook"]["note"] == "mean age"
    charged = enforcer.session_used
    assert charged > 0
    enforcer.review_outcomes([rid])  # asked again (the notebook reconnected): not charged twice
    assert enforcer.session_used == charged and log.kinds().count("release") == 1
    (entry,) = [e for k, e in log.entries if k == "release"]
    assert entry["review"] == rid and entry["digest"] == keep.queue.get(rid).digest


def test_a_note_under_review_goes_to_the_owner_even_where_text_is_not_released(setup):
    """types = ["number"]: a note would stay in the Keep — but under review the owners read it
    and approve it with the value."""
    enforcer, keep, owner, _ = setup
    ((_, pending),) = release(enforcer, 1.0, note="ward a")
    shown = ask(keep, owner, "show", {"id": pending["metadata"]["keepbook"]["review"]["id"]})
    assert shown["content"]["request"]["note"] == "ward a"
    gate = Enforcer(OutputPolicy.parse(b'[release]\ntypes = ["number"]\n', "production"),
                    "production").cell()
    out = gate.filter("release", {"value": {"type": "number", "value": 1.0}, "note": "ward a"})
    assert "withheld by policy: release.note" in out[0][1]["text"]


def test_an_approved_value_over_the_session_budget_stays_in_the_keep(setup):
    enforcer, keep, owner, log = setup
    enforcer.policy = OutputPolicy.parse(REVIEW + b"[output]\nsession_bytes = 40\n", "production")
    ((_, pending),) = release(enforcer, 42.5, note="x" * 30)
    rid = pending["metadata"]["keepbook"]["review"]["id"]
    approve(keep, owner, rid)
    for _ in range(2):
        (out,) = enforcer.review_outcomes([rid])
        assert out["state"] == "approved" and "data" not in out
        assert out["notice"].startswith("withheld by policy: output.session_bytes")
    assert enforcer.session_used == 0 and "release" not in log.kinds()
    assert [e for k, e in log.entries if k == "refusal"] == [{"rule": "output.session_bytes",
                                                              "review": rid}]  # said once


def test_nothing_is_queued_decided_or_delivered_that_the_log_cannot_record(setup):
    enforcer, keep, owner, log = setup
    ((_, first),) = release(enforcer, 1.0)
    ((_, second),) = release(enforcer, 2.0)
    ids = [p["metadata"]["keepbook"]["review"]["id"] for p in (first, second)]
    approve(keep, owner, ids[0])
    log.full = True
    out = release(enforcer, 3.0)  # not queued
    assert [c["text"] for _, c in out] == ["withheld by policy: audit.full — the Keep's audit log "
                                           "is full, and nothing is queued that the log cannot record"]
    assert len(keep.queue.requests) == 2
    refused = approve(keep, owner, ids[1])  # not decided
    assert not refused["ok"] and "audit log is full" in refused["reason"]
    assert keep.queue.get(ids[1]).state == "pending" and not keep.queue.get(ids[1]).approvals
    (out,) = enforcer.review_outcomes([ids[0]])  # approved before, not delivered now
    assert "data" not in out and out["notice"].startswith("withheld by policy: audit.full")
    assert enforcer.session_used == 0


def test_a_trusted_answer_is_rendered_labelled_and_charged(setup):
    enforcer, *_ = setup
    gate = enforcer.cell()
    ((kind, shown),) = gate.filter("answer", {"value": {"type": "number", "value": 12.5},
                                              "note": "differentially private count",
                                              "keepbook": {"dp": {"epsilon": 0.1},
                                                           "released": "forged"}})
    assert kind == "display_data" and shown["data"]["text/plain"].startswith("12.5\n")
    assert shown["metadata"]["keepbook"] == {"released": True, "type": "number",
                                             "note": "differentially private count",
                                             "dp": {"epsilon": 0.1}}
    assert enforcer.session_used > 0


def test_a_cell_cannot_label_its_own_output():
    """A cell's display that claims to be a pending review or a released value loses the claim:
    only the Keep labels (the notebook updates 'pending' outputs in place)."""
    gate = Enforcer(OutputPolicy.parse(b"", "staging"), "staging").cell()
    forged = {"data": {"text/plain": "release #1 is waiting"},
              "metadata": {"keepbook": {"review": {"id": 1, "state": "pending"}}, "mine": 1}}
    ((kind, out),) = gate.filter("display_data", forged)
    assert kind == "display_data" and out["metadata"] == {"mine": 1}
