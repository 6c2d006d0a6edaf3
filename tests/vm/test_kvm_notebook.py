"""`%keep new --backend kvm` in a real kernel: the walkthrough notebook's WAT and C cells run in
a Keep that is its own VM (software emulation here: nested KVM stalls guest kernels on these
machines), and everything that works on a nil Keep works on it — attest, interrupt, deadline,
memory limit, a sealed upload read by a C cell, the audit log — while a Python cell says at
once that this Keep has no Python engine.  Last, kill -9 of QEMU mid-cell: a clear error
within 2 s, the Keep failed with the reason, and `%keep new --backend kvm` works after.

One VM for the module (two for the kill test): each boot costs tens of seconds under TCG."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time

import pytest

from keepbook.keep.shared import vm_image
from tests.conftest import ROOT
from tests.kernel.kernel_client import Kernel, keep_id
from tests.support.cells import LOOP_WAT, print_wat
from tests.support.procs import vm_pid
from tests.vm.conftest import requires_vm

pytestmark = [requires_vm, pytest.mark.slow]

BOOT_S = 150
LOOP = "%%wat\n" + LOOP_WAT
HELLO = "%%wat\n" + print_wat("still alive\n")
MEMORY = "64MiB"
NEW = f"%keep new --backend kvm --memory {MEMORY} --output-cap 64KiB"
#: writes 4 KiB lines forever: past the output cap, the Keep cuts it with a notice
FLOOD = '''%%wat --timeout 3
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (memory.fill (i32.const 64) (i32.const 120) (i32.const 4096))
    (i32.store8 (i32.const 4159) (i32.const 10))
    (i32.store (i32.const 0) (i32.const 64)) (i32.store (i32.const 4) (i32.const 4096))
    (loop $l (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))) (br $l))))'''


def walkthrough_cells() -> dict[str, str]:
    """The walkthrough notebook's cells by their first line's magic (its WAT, invoke and C cells)."""
    nb = json.loads((ROOT / "notebooks" / "attestation-walkthrough.ipynb").read_text())
    out: dict[str, str] = {}
    for cell in nb["cells"]:
        src = "".join(cell["source"])
        if cell["cell_type"] != "code":
            continue
        first = src.splitlines()[0] if src else ""
        key = "wat-invoke" if first.startswith("%%wat --invoke") else first.split()[0] if first else ""
        if key in ("%%wat", "wat-invoke", "%%c"):
            out.setdefault(key, src)
    assert set(out) == {"%%wat", "wat-invoke", "%%c"}, f"the walkthrough changed: {sorted(out)}"
    return out


@pytest.fixture(scope="module")
def kernel():
    k = Kernel()
    res = k.execute(NEW, timeout=BOOT_S)
    assert res.status == "ok", res.text()
    yield k
    k.close()


def test_walkthrough_wat_cells_run_in_the_vm(kernel):
    cells = walkthrough_cells()
    res = kernel.execute(cells["%%wat"], timeout=60)
    assert res.status == "ok", res.text()
    assert "Hello from inside the Keep!" in res.stream("stdout")
    res = kernel.execute(cells["wat-invoke"], timeout=60)
    assert res.status == "ok" and "42" in res.text(), res.text()


def test_walkthrough_c_cell_runs_in_the_vm(kernel):
    res = kernel.execute(walkthrough_cells()["%%c"], timeout=120)
    assert res.status == "ok", res.text()
    assert "sum 1..100 = 5050 (computed in the Keep)" in res.stream("stdout")


def test_attested_as_a_vm_without_protection(kernel):
    res = kernel.execute("%attest --json")
    vector = json.loads(res.text()[res.text().index("{"):])
    assert vector["label"] == "NO PROTECTION (VM)" and vector["kind"] == "nil"
    claims = {c["name"]: c for c in vector["claims"]}
    image = vm_image.KeepImage.load()
    assert claims["image"]["status"] == "verified"
    assert claims["image"]["detail"]["image"] == image.digest
    assert "image" in vector["required"]


def test_status_says_how_the_host_runs_it(kernel):
    text = kernel.execute("%keep status").text()
    assert re.search(r"protection\s+NO PROTECTION \(VM\)", text), text
    host = re.search(r"host_says\s+(.*)", text)
    assert host and "QEMU VM" in host.group(1), text
    assert ("software emulation (TCG)" in host.group(1)) != ("KVM acceleration" in host.group(1))


def test_python_cell_says_there_is_no_engine_at_once(kernel):
    started = time.monotonic()
    res = kernel.execute("x = 6 * 7\nx", timeout=60)
    assert res.status == "error"
    assert any("no Python engine" in e["evalue"] for e in res.errors()), res.errors()
    assert time.monotonic() - started < 30  # not a hang: said before any engine could start


def test_interrupt_stops_a_runaway_cell(kernel):
    threading.Timer(2.0, kernel.km.interrupt_kernel).start()
    res = kernel.execute(LOOP, timeout=60)
    assert res.status == "error"
    assert any("interrupt" in (e["evalue"] + e["ename"]).lower() for e in res.errors()), res.errors()
    assert "still alive" in kernel.execute(HELLO, timeout=60).stream("stdout")


def test_deadline_stops_a_runaway_cell(kernel):
    res = kernel.execute(LOOP.replace("%%wat", "%%wat --timeout 2"), timeout=60)
    assert res.status == "error"
    assert any("deadline" in e["evalue"].lower() or "time" in e["evalue"].lower()
               for e in res.errors()), res.errors()


def test_memory_limit_is_enforced_in_the_vm(kernel):
    grow = ('%%wat\n(module (memory (export "memory") 1) (func (export "_start") (loop $l '
            '(if (i32.eq (memory.grow (i32.const 16)) (i32.const -1)) (then unreachable)) (br $l))))')
    res = kernel.execute(grow, timeout=60)
    assert res.status == "error"
    assert any("memory limit of 64 MiB" in e["evalue"] for e in res.errors()), res.errors()


def test_output_cap_cuts_a_flood_with_a_notice(kernel):
    res = kernel.execute(FLOOD, timeout=60)
    assert len(res.stream("stdout")) <= 64 * 1024
    assert "output truncated" in res.text(), res.text()[-500:]


def test_sealed_upload_is_read_by_a_c_cell_and_audited(kernel, tmp_path):
    data = tmp_path / "rows.csv"
    data.write_text("id,value\n1,forty-two\n")
    res = kernel.execute(f"%upload {data} --as rows.csv", timeout=60)
    assert res.status == "ok", res.text()
    cat = ('%%c\n#include <stdio.h>\nint main(void) {\n  FILE *f = fopen("/data/rows.csv", "r");\n'
           '  char line[128];\n  if (!f) { puts("no file"); return 1; }\n'
           '  while (fgets(line, sizeof line, f)) fputs(line, stdout);\n  return 0;\n}')
    res = kernel.execute(cat, timeout=120)
    assert res.status == "ok" and "1,forty-two" in res.stream("stdout"), res.text()
    audit = kernel.execute("%audit", timeout=60)
    assert audit.status == "ok", audit.text()
    assert "dataset" in audit.text() and "rows.csv" in audit.text()


def test_qemu_killed_mid_cell_is_a_clear_error_and_kvm_keep_new_works_after(kernel):
    kid = keep_id(kernel)
    qemu = vm_pid(kid)
    assert qemu is not None, "no QEMU process under this Keep's loader"
    at: list[float] = []

    def kill() -> None:
        os.kill(qemu, signal.SIGKILL)
        at.append(time.monotonic())
    threading.Timer(2.0, kill).start()
    res = kernel.execute(LOOP, timeout=60)
    elapsed = time.monotonic() - at[0]
    assert res.status == "error"
    text = " ".join(e["evalue"] for e in res.errors())
    assert "Traceback" not in text and ("lost" in text or "unknown" in text), text
    assert elapsed < 2.0, elapsed
    deadline = time.monotonic() + 10
    while True:  # the loader notices QEMU's end and tells the manager
        status = kernel.execute("%keep status").text()
        if re.search(r"state\s+failed", status) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert re.search(r"state\s+failed", status), status
    assert "QEMU was killed by SIGKILL" in status, status
    res = kernel.execute(NEW, timeout=BOOT_S)
    assert res.status == "ok", res.text()
    assert "still alive" in kernel.execute(HELLO, timeout=60).stream("stdout")
