"""The audit log is bounded and always readable (issue 12, item 7): pages of any size verify as
one log; a full log records that it is full, and from then on nothing happens that it cannot
record — no release leaves, no cell runs, no dataset opens."""

from __future__ import annotations

import asyncio

import pytest

from keepbook.keep.inside import audit_log
from keepbook.keep.inside.cells import AuditFull, Cells
from keepbook.keep.inside.output_gate import Enforcer
from keepbook.keep.shared import audit_format, protocol
from keepbook.keep.shared.policy import OutputPolicy
from tests.audit.test_audit_log import make_log


def pages(log: audit_log.AuditLog, page_bytes: int) -> tuple[bytes, dict, bytes]:
    first = log.export(0, page_bytes)
    want, blob = first["head"]["count"], first["entries"]
    while len(protocol.decode_sequence(blob)) < want:
        page = log.export(len(protocol.decode_sequence(blob)), page_bytes)
        assert page["entries"], "a page with nothing in it before the head's count"
        blob += page["entries"]
    return blob, first["head"], first["signature"]


@pytest.mark.parametrize("page_bytes", [1, 200, 10_000, audit_format.PAGE_BYTES])
def test_any_page_size_reads_the_same_verified_log(page_bytes):
    log, config = make_log(40)
    blob, head, sig = pages(log, page_bytes)
    assert blob == log.export()["entries"]
    assert len(audit_format.verify_export(blob, head, sig, config).entries) == 40


def test_a_full_log_says_so_and_records_nothing_more():
    log, config = make_log(1)
    log.max_bytes = log.size + 2000
    n = 0
    while log.append("release", {"digest": "sha256:" + "0" * 64, "type": "number", "bytes": 1, "note": ""}):
        n += 1
    assert n > 3 and log.full and log.size <= log.max_bytes
    assert log.append("cell", {"cell_id": "c"}) is False
    verified = audit_format.verify_export(log.export()["entries"], log.export()["head"],
                                          log.export()["signature"], config)
    last = verified.entries[-1]
    assert last["kind"] == "log-full" and last["data"]["refused"] == "release"
    assert "released nothing, ran no cell and took no dataset" in verified.table()[-1]["detail"]


def test_the_gate_releases_nothing_the_full_log_cannot_record():
    log, _ = make_log(1)
    log.max_bytes = log.size + 1500
    gate = Enforcer(OutputPolicy.for_profile("production"), "production", log.append).cell()
    shown = []
    for i in range(20):
        shown += gate.filter("release", {"value": {"type": "number", "value": i}, "note": ""})
    released = [c for k, c in shown if k == "display_data"]
    refused = [c["text"] for k, c in shown if k == "notice"]
    assert 0 < len(released) < 20
    assert refused == ["withheld by policy: audit.full — the Keep's audit log is full, and nothing "
                       "leaves that the log cannot record"]
    assert gate.e.session_used == sum(len(str(i)) + 26 for i in range(len(released)))


def test_a_full_log_runs_no_cell():
    log, _ = make_log(1)
    log.full = True
    config = protocol.KeepConfig(keep_id="k", backend="nil", profile="production",
                                 limits=dict(protocol.DEFAULT_LIMITS), policy=b"", runtime={})
    cells = Cells(config, audit=log.append)

    async def first_event():
        async for item in cells.run(protocol.RunRequest(cell_id="c", kind="python", code="1")):
            return item
    with pytest.raises(AuditFull, match="audit log is full.*runs no more cells"):
        asyncio.run(first_event())
    assert cells._lock.acquire(blocking=False)  # and the Keep is not left busy
