"""The kernel under faults: interrupts, dead Keeps, unreachable managers, limits, bad cells.
Each ends in a clear error and leaves the kernel usable."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from tests.support.cells import LOOP_WAT, print_wat
from tests.kernel.kernel_client import Kernel, keep_id
from tests.support.procs import alive, keep_pids

LOOP = "%%wat\n" + LOOP_WAT
HELLO = "%%wat\n" + print_wat("still alive\n")


@pytest.fixture(scope="module")
def kernel():
    k = Kernel()
    yield k
    k.close()




def test_nothing_runs_before_attestation_and_trust_vector_is_shown(kernel):
    res = kernel.execute("%keep new --backend sim-snp --profile staging")
    assert res.status == "ok" and "Not attested yet" in res.stream()
    res = kernel.execute("%attest")
    assert res.status == "ok"
    shown = res.of_type("display_data")[0]["data"]
    assert "RESULT: VERIFIED" in shown["text/plain"] and "SIMULATED" in shown["text/plain"]
    assert "application/vnd.jupyter.widget-view+json" in shown
    assert 'data-claim="report_data"' in shown["text/html"]
    # the Keep fingerprint the analyst reads out to the data owner (issue 12, item 4), the same
    # one `%keep status` shows
    fp = shown["text/plain"].split("Keep fingerprint: ")[1].split(" ")[0]
    assert fp.startswith("kf:") and f"<code>{fp}</code>" in shown["text/html"]
    status = kernel.execute("%keep status").of_type("display_data")[0]["data"]["text/plain"]
    assert fp in status


def test_attest_explain_lists_report_fields(kernel):
    res = kernel.execute("%attest --explain")
    text = res.of_type("display_data")[0]["data"]["text/plain"]
    assert "Evidence fields" in text and "MEASUREMENT".lower() in text.lower()


def test_interrupt_stops_runaway_loop_and_keep_stays_usable(kernel):
    def interrupt_soon():
        time.sleep(1.0)
        kernel.km.interrupt_kernel()
    t = threading.Thread(target=interrupt_soon)
    t.start()
    started = time.monotonic()
    res = kernel.execute(LOOP, timeout=30)
    t.join()
    assert res.status == "error"
    assert time.monotonic() - started < 5
    assert any("interrupt" in (e["evalue"] + e["ename"]).lower() for e in res.errors()), res.errors()
    again = kernel.execute(HELLO)
    assert again.status == "ok" and "still alive" in again.stream("stdout")


def test_timeout_stops_loop(kernel):
    res = kernel.execute(LOOP.replace("%%wat", "%%wat --timeout 1"), timeout=30)
    assert res.status == "error"
    assert any("deadline" in e["evalue"].lower() or "timeout" in e["evalue"].lower()
               or "time" in e["evalue"].lower() for e in res.errors()), res.errors()


def test_memory_limit_is_a_clear_error(kernel):
    grow = ('%%wat\n(module (memory (export "memory") 1) (func (export "_start") (loop $l '
            '(if (i32.eq (memory.grow (i32.const 16)) (i32.const -1)) (then unreachable)) (br $l))))')
    assert kernel.execute("%keep new --backend nil --memory 16MiB").status == "ok"
    res = kernel.execute(grow)
    assert res.status == "error"
    assert any("memory limit of 16 MiB" in e["evalue"] for e in res.errors()), res.errors()
    assert "still alive" in kernel.execute(HELLO).stream("stdout")


def test_compile_error_sends_nothing(kernel):
    res = kernel.execute("%%c\nint main(void) { return undefined_thing; }")
    assert res.status == "error"
    err = res.errors()[0]
    assert err["ename"] == "CompileError" and "cell.c:1" in err["evalue"]
    assert "nothing was sent" in err["evalue"]


def test_bad_magic_is_usage_error(kernel):
    res = kernel.execute("%keep explode")
    assert res.status == "error" and res.errors()[0]["ename"] == "UsageError"
    res = kernel.execute("%%wat --invoke add one\n(module)")
    assert res.status == "error" and "numbers" in res.errors()[0]["evalue"]


def test_missing_start_and_wrong_export(kernel):
    res = kernel.execute('%%wat\n(module (func (export "f")))')
    assert res.status == "error" and "_start" in res.text()
    res = kernel.execute('%%wat --invoke nope\n(module (func (export "f")))')
    assert res.status == "error" and "f" in res.text()


def test_keep_killed_mid_cell_gives_clear_error_then_recovers(kernel):
    kernel.execute("%keep new --backend nil")
    kernel.execute(HELLO)
    kid = keep_id(kernel)
    _, wasmldr = keep_pids(kid)
    assert wasmldr is not None

    def kill_soon():
        time.sleep(1.0)
        os.kill(wasmldr, signal.SIGKILL)
    t = threading.Thread(target=kill_soon)
    t.start()
    started = time.monotonic()
    res = kernel.execute(LOOP, timeout=30)
    t.join()
    elapsed = time.monotonic() - started - 1.0
    assert res.status == "error"
    assert elapsed < 2.0, elapsed
    assert "unknown" in res.errors()[-1]["evalue"] or "lost" in res.errors()[-1]["evalue"]
    status = kernel.execute("%keep status")
    assert "failed" in status.text() or "closed" in status.text()
    assert kernel.execute("%keep new --backend nil").status == "ok"
    assert "still alive" in kernel.execute(HELLO).stream("stdout")


def test_keepldr_killed_between_cells(kernel):
    kernel.execute("%keep new --backend nil")
    kernel.execute(HELLO)
    keepldr, wasmldr = keep_pids(keep_id(kernel))
    os.kill(keepldr, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while alive(wasmldr) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(wasmldr), "a Keep must end when its loader dies"
    res = kernel.execute(HELLO, timeout=30)
    assert res.status == "error" and "still alive" not in res.stream("stdout")
    assert kernel.execute("%keep new --backend nil").status == "ok"


def test_unreachable_manager_is_clear_and_quick(kernel):
    started = time.monotonic()
    res = kernel.execute("%keep new --manager http://127.0.0.1:9 --backend nil", timeout=30)
    assert res.status == "error"
    assert "cannot reach the keep manager" in res.errors()[0]["evalue"]
    assert time.monotonic() - started < 10


def test_close_and_list(kernel):
    kernel.execute("%keep new --backend nil")
    kid = keep_id(kernel)
    assert kid in kernel.execute("%keep list").stream()
    assert f"Keep {kid} closed" in kernel.execute("%keep close").stream()
    res = kernel.execute("%keep status")
    assert res.status == "error" and "%keep new" in res.errors()[0]["evalue"]


def test_shutdown_stops_embedded_manager_and_keeps():
    k = Kernel()
    try:
        k.execute("%keep new --backend nil")
        k.execute(HELLO)
        keepldr, wasmldr = keep_pids(keep_id(k))
        assert keepldr and wasmldr
    finally:
        k.close()
    deadline = time.monotonic() + 10
    while (alive(keepldr) or alive(wasmldr)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(keepldr) and not alive(wasmldr)


def test_long_steps_show_progress_that_ends_in_one_line(kernel):
    res = kernel.execute("%keep new --backend sim-snp")
    bars = [o["content"] for o in res.outputs if o["msg_type"] in ("display_data", "update_display_data")]
    assert bars and bars[0]["transient"]["display_id"] == bars[-1]["transient"]["display_id"]
    assert "application/vnd.jupyter.widget-view+json" in bars[0]["data"]
    assert bars[-1]["data"]["text/plain"].startswith("✔ Keep ") and " created (" in bars[-1]["data"]["text/plain"]
    res = kernel.execute("%%c\nint main(void) { return 0; }")
    assert any("compiled" in o["content"]["data"]["text/plain"] for o in res.outputs
               if o["msg_type"] == "update_display_data")


def test_attest_and_audit_can_be_saved(kernel, tmp_path):
    from keepbook.keep.shared import protocol

    target = tmp_path / "keep.attestation"
    res = kernel.execute(f"%attest --save {target}")
    assert res.status == "ok" and f"Attestation saved to {target}" in res.stream()
    resp = protocol.AttestResponse.from_cbor(target.read_bytes())
    assert resp.evidence_kind == "sev-snp"
    log = tmp_path / "audit.cbor"
    res = kernel.execute(f"%audit --save {log}")
    assert res.status == "ok" and log.stat().st_size > 0


def test_parameters_cell_stays_in_the_kernel():
    k = Kernel()
    try:
        res = k.execute('# Parameters\nbackend = "nil"')
        assert res.status == "ok" and "notebook parameters: backend='nil'" in res.stream("stderr")
        assert "No Keep yet" not in res.text()  # nothing was sent anywhere: no Keep was made
        res = k.execute("%keep new --backend {backend}")
        assert res.status == "ok" and "backend nil" in res.stream()
    finally:
        k.close()


def test_no_keep_possible_gives_one_clear_message_with_what_to_do():
    k = Kernel()
    try:
        res = k.execute("%keep new --backend snp")
        assert res.status == "error"
        errors = res.errors()
        assert len(errors) == 1, errors  # one message, not a stack of tracebacks
        assert "not available" in errors[0]["evalue"] and "What to do" in errors[0]["evalue"]
        assert "--backend sim-snp" in errors[0]["evalue"]
        assert "Traceback" not in "".join(errors[0]["traceback"])
    finally:
        k.close()
