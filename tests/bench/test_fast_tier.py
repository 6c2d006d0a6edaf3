"""The Wasm runtime's fast tier (keep/inside/fastcells.py): a module whose first run was slow
runs later in a worker process without epoch checks.  It must behave exactly like an in-process
run — output, results, traps, deadlines, interrupts — only faster.  No timing is asserted
beyond "the deadline stopped it"."""

from __future__ import annotations

import threading
import time

import pytest
import wasmtime

from keepbook.keep.inside import fastcells
from keepbook.keep.inside.runtime import WasmRuntime

SPIN_WAT = """(module
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "done\\n")
  (func $spin (export "spin") (param $n i64) (result i64)
    (local $i i64) (local $acc i64)
    (if (i64.eqz (local.get $n)) (then unreachable))
    (block $b (loop $l
      (br_if $b (i64.ge_u (local.get $i) (local.get $n)))
      (local.set $acc (i64.add (local.get $acc) (i64.mul (local.get $i) (local.get $i))))
      (local.set $i (i64.add (local.get $i) (i64.const 1)))
      (br $l)))
    (local.get $acc))
  (func (export "say") (param $n i64) (result i64)
    (i32.store (i32.const 0) (i32.const 16)) (i32.store (i32.const 4) (i32.const 5))
    (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
    (call $spin (local.get $n))))"""

FOREVER = 1 << 62


@pytest.fixture(scope="module")
def module() -> bytes:
    return bytes(wasmtime.wat2wasm(SPIN_WAT))


@pytest.fixture
def rt(monkeypatch):
    monkeypatch.setattr(fastcells, "FAST_TIER_MIN_S", 0.0)  # every module qualifies after one run
    runtime = WasmRuntime()
    yield runtime
    runtime.close()


def run(rt, module, name, n, timeout=30.0):
    events = []
    status = rt.run(module, invoke=name, args=[n], emit=lambda k, c: events.append((k, c)),
                    timeout_s=timeout)
    return status, events


def promoted(rt, module) -> None:
    """Run once in-process, then wait until the worker is up."""
    status, _ = run(rt, module, "spin", 1000)
    assert status["ok"] and "tier" not in status
    deadline = time.monotonic() + 60
    while not (rt._fast is not None and rt._fast.ready()):
        assert time.monotonic() < deadline, "fast-tier worker did not start"
        time.sleep(0.05)


def strip(status: dict) -> dict:
    return {k: v for k, v in status.items() if k not in ("elapsed_s", "tier")}


def test_same_results_and_output_in_both_tiers(rt, module):
    slow = run(rt, module, "say", 1000)
    promoted(rt, module)
    fast = run(rt, module, "say", 1000)
    assert fast[0]["tier"] == "fast"
    assert strip(fast[0]) == strip(slow[0])
    assert fast[1] == slow[1]
    assert ("stream", {"name": "stdout", "text": "done\n"}) in fast[1]


def test_trap_is_explained_the_same(rt, module):
    slow = run(rt, module, "spin", 0)
    assert slow[0]["reason"] == "trap"
    promoted(rt, module)
    fast = run(rt, module, "spin", 0)
    assert fast[0]["tier"] == "fast" and strip(fast[0]) == strip(slow[0])
    assert [k for k, _ in fast[1]] == ["error"] and fast[1][0][1]["ename"] == slow[1][0][1]["ename"]


def test_deadline_kills_the_worker_and_it_comes_back(rt, module):
    promoted(rt, module)
    status, events = run(rt, module, "spin", FOREVER, timeout=0.5)
    assert status["reason"] == "timeout" and status["tier"] == "fast"
    assert events[-1][0] == "error" and events[-1][1]["ename"] == "TimeoutError"
    # the next run works: in-process while a new worker starts, then fast again
    status, _ = run(rt, module, "spin", 1000)
    assert status["ok"]
    promoted(rt, module)
    assert run(rt, module, "spin", 1000)[0]["tier"] == "fast"


def test_interrupt_reaches_a_cell_in_the_worker(rt, module):
    promoted(rt, module)
    threading.Timer(0.3, rt.interrupt).start()
    status, events = run(rt, module, "spin", FOREVER, timeout=60)
    assert status["reason"] == "interrupted" and status["tier"] == "fast"
    assert events[-1][1]["ename"] == "KeyboardInterrupt"


def test_fuel_metered_cells_never_leave_the_keep_process(rt, module):
    promoted(rt, module)
    events = []
    status = rt.run(module, invoke="spin", args=[1000], emit=lambda k, c: events.append(c),
                    timeout_s=30, fuel=10_000_000)
    assert status["ok"] and "tier" not in status and "fuel_used" in status


def test_close_stops_the_worker(rt, module):
    promoted(rt, module)
    proc = rt._fast._proc
    rt.close()
    assert proc.poll() is not None
