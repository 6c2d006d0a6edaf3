"""WasmRuntime: WASI output, exports, traps, limits, interrupts — with small WAT modules."""

from __future__ import annotations

import threading
import time

import pytest
import wasmtime

from keepbook.keep.inside.runtime import WasmRuntime

MiB = 1024 * 1024

HELLO = r"""(module
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "hello, keep\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 12))
    (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"""

ADD = r"""(module
  (func (export "add") (param i32 i32) (result i32) (i32.add (local.get 0) (local.get 1)))
  (func (export "half") (param f64) (result f64) (f64.div (local.get 0) (f64.const 2)))
  (func (export "pair") (result i32 i64) (i32.const 1) (i64.const 2)))"""

TRAP = r"""(module (func (export "_start") unreachable))"""

DIV0 = r"""(module (func (export "div") (param i32) (result i32)
  (i32.div_s (i32.const 1) (local.get 0))))"""

LOOP = r"""(module (func (export "_start") (loop $l (br $l))))"""

MEMORY_BOMB = r"""(module
  (memory (export "memory") 1)
  (func (export "_start")
    (loop $l
      (if (i32.eq (memory.grow (i32.const 16)) (i32.const -1)) (then unreachable))
      (br $l))))"""

FLOOD = r"""(module
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start") (local $i i32)
    (i32.store (i32.const 0) (i32.const 1024))
    (i32.store (i32.const 4) (i32.const 4096))
    (memory.fill (i32.const 1024) (i32.const 120) (i32.const 4096))
    (loop $l
      (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (i32.const 1000))))))"""

EXIT3 = r"""(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start") (call $exit (i32.const 3))))"""

# Prints "tick\n", then sleeps 2 s via poll_oneoff, then prints again.
SLEEPER = r"""(module
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $p (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "tick\n")
  (func $say
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 5))
    (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))
  (func (export "_start")
    (call $say)
    ;; subscription at 64: userdata 0, tag 0 (clock), clock id 1, timeout 2e9 ns, flags 0
    (i64.store (i32.const 64) (i64.const 7))
    (i32.store8 (i32.const 72) (i32.const 0))
    (i32.store (i32.const 80) (i32.const 1))
    (i64.store (i32.const 88) (i64.const 2000000000))
    (drop (call $p (i32.const 64) (i32.const 128) (i32.const 1) (i32.const 256)))
    (call $say)))"""


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[float, str, dict]] = []

    def __call__(self, kind: str, content: dict) -> None:
        self.events.append((time.monotonic(), kind, content))

    def kinds(self) -> list[str]:
        return [k for _, k, _ in self.events]

    def of(self, kind: str) -> list[dict]:
        return [c for _, k, c in self.events if k == kind]

    def stdout(self) -> str:
        return "".join(c["text"] for c in self.of("stream") if c["name"] == "stdout")


def wasm(wat: str) -> bytes:
    return wasmtime.wat2wasm(wat)


@pytest.fixture(scope="module")
def rt() -> WasmRuntime:
    return WasmRuntime(memory_bytes=64 * MiB)


def run(rt: WasmRuntime, wat: str, **kw):
    rec = Recorder()
    kw.setdefault("timeout_s", 10)
    status = rt.run(wasm(wat), emit=rec, **kw)
    return status, rec


def test_hello_stdout(rt):
    status, rec = run(rt, HELLO)
    assert status["ok"] and status["reason"] == "ok"
    assert rec.stdout() == "hello, keep\n"
    assert "error" not in rec.kinds()


def test_invoke_with_args_and_results(rt):
    status, rec = run(rt, ADD, invoke="add", args=[2, 40])
    assert status["ok"] and status["results"] == [42]
    assert rec.of("execute_result") == [{"data": {"text/plain": "42"}, "metadata": {}}]
    status, rec = run(rt, ADD, invoke="half", args=[5])
    assert rec.of("execute_result")[0]["data"]["text/plain"] == "2.5"
    status, rec = run(rt, ADD, invoke="pair")
    assert rec.of("execute_result")[0]["data"]["text/plain"] == "1, 2"


def test_module_cache_reuses_compiled_module():
    rt = WasmRuntime()
    run(rt, ADD, invoke="add", args=[1, 2])
    run(rt, ADD, invoke="add", args=[3, 4])
    assert rt.stats["compiled"] == 1 and rt.stats["cache_hits"] == 1


def test_trap_is_named(rt):
    status, rec = run(rt, TRAP)
    assert not status["ok"] and status["reason"] == "trap"
    (err,) = rec.of("error")
    assert err["ename"] == "WasmTrap" and "unreachable" in err["evalue"]
    status, rec = run(rt, DIV0, invoke="div", args=[0])
    assert "division by zero" in rec.of("error")[0]["evalue"]


def test_nonzero_exit_code(rt):
    status, rec = run(rt, EXIT3)
    assert status == {**status, "ok": False, "reason": "exit", "exit_code": 3}
    assert "code 3" in rec.of("error")[0]["evalue"]


def test_missing_start(rt):
    status, rec = run(rt, ADD)
    assert status["reason"] == "no_start"
    evalue = rec.of("error")[0]["evalue"]
    assert "_start" in evalue and "add" in evalue and "--invoke" in evalue


def test_wrong_export_lists_exports(rt):
    status, rec = run(rt, ADD, invoke="sub", args=[1, 2])
    assert status["reason"] == "no_export"
    evalue = rec.of("error")[0]["evalue"]
    assert "'sub'" in evalue and "add, half, pair" in evalue


@pytest.mark.parametrize("args, words", [([1], "takes 2 argument"), ([1, 2.5], "integer"),
                                         ([1, "x"], "must be i32"), ([1, 2**40], "fit in i32")])
def test_bad_arguments(rt, args, words):
    status, rec = run(rt, ADD, invoke="add", args=args)
    assert status["reason"] == "bad_args"
    assert words in rec.of("error")[0]["evalue"]


def test_invalid_module(rt):
    rec = Recorder()
    status = rt.run(b"\0asm\x01\0\0\0garbage", emit=rec, timeout_s=5)
    assert status["reason"] == "invalid_module"
    assert "not valid WebAssembly" in rec.of("error")[0]["evalue"]


def test_timeout_then_usable(rt):
    t0 = time.monotonic()
    status, rec = run(rt, LOOP, timeout_s=0.3)
    assert status["reason"] == "timeout"
    assert 0.3 <= time.monotonic() - t0 < 1.5
    assert rec.of("error")[0]["ename"] == "TimeoutError"
    assert run(rt, HELLO)[0]["ok"]


def test_interrupt_from_other_thread_then_usable(rt):
    result: dict = {}
    rec = Recorder()
    th = threading.Thread(target=lambda: result.update(
        rt.run(wasm(LOOP), emit=rec, timeout_s=30)))
    th.start()
    time.sleep(0.3)
    t0 = time.monotonic()
    assert rt.interrupt()
    th.join(5)
    assert not th.is_alive() and time.monotonic() - t0 < 0.1
    assert result["reason"] == "interrupted"
    assert rec.of("error")[0]["ename"] == "KeyboardInterrupt"
    assert not rt.interrupt()  # nothing running now
    assert run(rt, HELLO)[0]["ok"]


def test_interrupt_wakes_a_sleeping_guest(rt):
    result: dict = {}
    rec = Recorder()
    th = threading.Thread(target=lambda: result.update(
        rt.run(wasm(SLEEPER), emit=rec, timeout_s=30)))
    th.start()
    time.sleep(0.3)
    assert rec.stdout() == "tick\n"  # streamed while the cell runs
    rt.interrupt()
    th.join(2)
    assert not th.is_alive()
    assert result["reason"] == "interrupted"


def test_memory_bomb_hits_limit():
    rt = WasmRuntime(memory_bytes=16 * MiB)
    status, rec = run(rt, MEMORY_BOMB)
    assert status["reason"] == "memory"
    assert "exceeded the Keep's memory limit of 16 MiB" in rec.of("error")[0]["evalue"]
    status, rec = run(rt, MEMORY_BOMB, memory_bytes=8 * MiB)
    assert "8 MiB" in rec.of("error")[0]["evalue"]


def test_module_needing_more_than_limit():
    rt = WasmRuntime(memory_bytes=1 * MiB)
    status, rec = run(rt, "(module (memory 100) (func (export \"_start\")))")
    assert status["reason"] == "memory"
    assert "memory limit of 1 MiB" in rec.of("error")[0]["evalue"]


def test_fuel_exhausted(rt):
    status, rec = run(rt, LOOP, fuel=100_000)
    assert status["reason"] == "fuel"
    assert "fuel" in rec.of("error")[0]["evalue"]
    status, rec = run(rt, ADD, invoke="add", args=[1, 1], fuel=1000)
    assert status["ok"] and 0 < status["fuel_used"] <= 1000


def test_output_flood_truncated_with_notice(rt):
    status, rec = run(rt, FLOOD, output_bytes=10_000)
    assert status["ok"] and status["truncated"]
    assert len(rec.stdout()) == 10_000
    notices = rec.of("notice")
    assert len(notices) == 1 and "truncated" in notices[0]["text"]


def test_output_streams_before_run_returns(rt):
    status, rec = run(rt, SLEEPER, timeout_s=0.5)
    first = rec.events[0]
    assert first[1] == "stream" and first[2]["text"] == "tick\n"
    assert status["reason"] == "timeout"


def test_data_dir_read_only(tmp_path):
    (tmp_path / "x.txt").write_text("secret")
    rt = WasmRuntime(data_dir=str(tmp_path))
    # path_open("x.txt") under fd 4 (/data; fd 3 is the run's scratch folder) with write
    # rights must fail; read rights succeed.
    wat = r"""(module
      (import "wasi_snapshot_preview1" "path_open"
        (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
      (memory (export "memory") 1)
      (data (i32.const 0) "x.txt")
      (func (export "ro") (result i32)
        (call $open (i32.const 4) (i32.const 0) (i32.const 0) (i32.const 5) (i32.const 0)
                    (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 100)))
      (func (export "rw") (result i32)
        (call $open (i32.const 4) (i32.const 0) (i32.const 0) (i32.const 5) (i32.const 1)
                    (i64.const 64) (i64.const 0) (i32.const 0) (i32.const 100))))"""
    status, rec = run(rt, wat, invoke="ro")
    assert status["results"] == [0]
    status, rec = run(rt, wat, invoke="rw")
    assert status["results"] != [0]
