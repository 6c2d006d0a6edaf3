"""The Wasm cell runtime of one Keep: wasmtime, WASI preview 1, limits, live output.

This runs *inside* the Keep and may see plaintext, so it never prints, never logs and never
touches the host's stdio: everything a cell produces leaves through the ``emit`` callback as
Jupyter-shaped contents (``stream``, ``execute_result``, ``error``, ``notice``).

Design choices (DESIGN.md §6):

* One :class:`wasmtime.Engine` per Keep, with epoch interruption.  Fuel metering changes the
  compiled code, so a second engine with ``consume_fuel`` is made lazily, the first time a cell
  asks for an instruction budget.  Compiled modules are cached per engine by the SHA-256 of
  their bytes in a bounded LRU.
* Deadlines and interrupts cost nothing per instruction: every store's epoch deadline is one
  tick ahead and *nobody ticks* while a cell runs normally.  The cell's watcher thread bumps the
  engine's epoch only when the deadline passes or :meth:`WasmRuntime.interrupt` is called, so
  the guest traps at its next loop back-edge or function entry (well under 100 ms).  Cells on
  one runtime are serialised by a lock, so a bump never hits a bystander.
* WASI as wasmtime gives it: the program's own fd table, argv (``--arg``), environment
  (``--env``), standard input (``--stdin``, a private file), a fresh writable scratch folder
  preopened as ``/`` (fd 3; removed afterwards; its size counts against the Keep's memory
  limit) and, when something was uploaded, ``/data`` read-only beside it (fd 4).
* stdout/stderr: wasmtime's own custom-output callbacks (``WasiConfig.stdout_custom``), so
  ``fd_write``, ``fd_close(1)`` and writes to files behave exactly as in wasmtime.  The callback
  never raises (wasmtime-py would print the exception to the process's stdout, which a Keep
  points at /dev/null anyway).  Small writes are coalesced and flushed by the watcher every
  50 ms, so a chatty loop does not make one event per byte yet output still arrives while the
  cell runs.
* ``poll_oneoff``: a sleep (clock subscriptions only) waits on the cell's stop event, so a
  sleeping guest is interruptible (a host call cannot be stopped by an epoch); any descriptor
  subscription goes to wasmtime's own ``poll_oneoff``, which checks the descriptors.
* Errors keep wasmtime's reason (its "Caused by:" lines), e.g. ``proc_exit(200)``'s "exit with
  invalid exit status outside of [0..126)".
* Fast tier: epoch checks made a numeric C loop twice as slow (see ``fastcells.py``).  A module
  whose last run took ``FAST_TIER_MIN_S`` or more runs next time in a worker process whose engine
  has no epoch checks; the Keep stops it by killing the worker.  Its first run, every short
  cell and every fuel-metered cell run here, as described above.
* Memory: ``Store.set_limits(memory_size=...)``.  wasmtime makes ``memory.grow`` return -1
  past the limit (it does not trap) and the C API has no limiter callback, so a failed cell
  whose linear memory is near the limit is reported as having exceeded it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

import wasmtime as wt

from keepbook.keep.shared import facts

Emit = Callable[[str, dict], None]

MiB = 1024 * 1024
DEFAULT_MEMORY = facts.DEFAULT_MEMORY_BYTES
DEFAULT_OUTPUT = facts.DEFAULT_OUTPUT_BYTES
MODULE_CACHE_SIZE = 32
FLUSH_S = 0.05  # how long small writes may wait before they are sent as one stream event
FLUSH_BYTES = 64 * 1024
WASM_PAGE = 65536

# WASI preview 1 errno values we answer with.
_SUCCESS, _EFAULT, _EINVAL = 0, 21, 28
SCRATCH_CHECK_S = 0.25  # how often the watcher measures a running cell's scratch folder

_I32, _I64, _F32, _F64 = "i32", "i64", "f32", "f64"

_TRAP_NAMES = {
    wt.TrapCode.STACK_OVERFLOW: "stack overflow",
    wt.TrapCode.MEMORY_OUT_OF_BOUNDS: "out-of-bounds memory access",
    wt.TrapCode.HEAP_MISALIGNED: "misaligned memory access",
    wt.TrapCode.TABLE_OUT_OF_BOUNDS: "out-of-bounds table access",
    wt.TrapCode.INDIRECT_CALL_TO_NULL: "indirect call to null",
    wt.TrapCode.BAD_SIGNATURE: "indirect call signature mismatch",
    wt.TrapCode.INTEGER_OVERFLOW: "integer overflow",
    wt.TrapCode.INTEGER_DIVISION_BY_ZERO: "integer division by zero",
    wt.TrapCode.BAD_CONVERSION_TO_INTEGER: "invalid conversion to integer",
    wt.TrapCode.UNREACHABLE: "unreachable instruction executed",
    wt.TrapCode.INTERRUPT: "interrupted",
    wt.TrapCode.OUT_OF_FUEL: "out of fuel",
}


def _kind(valtype: wt.ValType) -> str:
    return str(valtype)


@dataclass
class _Output:
    """One cell's stdout/stderr: coalesced, capped, flushed by the writer or the watcher."""

    emit: Emit
    limit: int
    lock: threading.Lock = field(default_factory=threading.Lock)
    pending: list[tuple[str, bytes]] = field(default_factory=list)
    pending_bytes: int = 0
    sent: int = 0
    truncated: bool = False
    last_flush: float = field(default_factory=time.monotonic)
    decoders: dict[str, Any] = field(default_factory=dict)

    def write(self, name: str, data: bytes) -> None:
        with self.lock:
            room = self.limit - self.sent - self.pending_bytes
            if len(data) > room:
                data = data[:max(room, 0)]
                if not self.truncated:
                    self.truncated = True
                    if data:
                        self._add(name, data)
                    self._flush_locked()
                    self.emit("notice", {
                        "text": f"output truncated: the cell wrote more than the limit of "
                                f"{_human(self.limit)}; the rest was dropped",
                        "reason": "output_truncated",
                    })
                return
            self._add(name, data)
            if self.pending_bytes >= FLUSH_BYTES or time.monotonic() - self.last_flush >= FLUSH_S:
                self._flush_locked()

    def _add(self, name: str, data: bytes) -> None:
        if self.pending and self.pending[-1][0] == name:
            self.pending[-1] = (name, self.pending[-1][1] + data)
        else:
            self.pending.append((name, data))
        self.pending_bytes += len(data)

    def flush(self, final: bool = False) -> None:
        with self.lock:
            self._flush_locked(final)

    def _flush_locked(self, final: bool = False) -> None:
        pending, self.pending = self.pending, []
        self.sent += self.pending_bytes
        self.pending_bytes = 0
        self.last_flush = time.monotonic()
        for name, data in pending:
            text = self._decode(name, data, final)
            if text:
                self.emit("stream", {"name": name, "text": text})
        if final:
            for name in list(self.decoders):
                tail = self._decode(name, b"", True)
                if tail:
                    self.emit("stream", {"name": name, "text": tail})

    def _decode(self, name: str, data: bytes, final: bool) -> str:
        import codecs

        dec = self.decoders.get(name)
        if dec is None:
            dec = self.decoders[name] = codecs.getincrementaldecoder("utf-8")("replace")
        return dec.decode(data, final)


def _human(n: int) -> str:
    if n >= MiB and n % MiB == 0:
        return f"{n // MiB} MiB"
    if n >= 1024 and n % 1024 == 0:
        return f"{n // 1024} KiB"
    return f"{n} bytes"


@dataclass(frozen=True)
class WasiInput:
    """What a WASI program gets besides its module: the arguments after its name, its
    environment and its standard input (``None``: empty)."""

    argv: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    stdin: bytes | None = None

    @classmethod
    def of(cls, argv: Any = None, env: Any = None, stdin: bytes | None = None) -> "WasiInput":
        return cls(tuple(str(a) for a in argv or ()),
                   tuple((str(k), str(v)) for k, v in env or ()), stdin)


@dataclass
class _Cell:
    """What the host functions and the watcher need to know about the running cell."""

    output: _Output
    engine: wt.Engine
    scratch: str | None = None
    scratch_limit: int = 0
    scratch_checked: float = 0.0
    native: Any = None  # (plain WASI linker, poll helper module): wasmtime's own poll_oneoff
    poll_helper: Any = None  # that helper's (memory, poll), instantiated in this store
    stop: threading.Event = field(default_factory=threading.Event)  # set with a reason
    done: threading.Event = field(default_factory=threading.Event)
    deadline: float = 0.0
    reason: str | None = None  # "timeout" | "interrupted", set once, before the epoch bump
    guard: threading.Lock = field(default_factory=threading.Lock)
    active: bool = True  # cleared under `guard` when the cell ends: no bump after that

    def halt(self, reason: str) -> None:
        with self.guard:
            if self.reason is None and self.active:
                self.reason = reason
                # the epoch first: a guest woken from a sleep by ``stop`` must trap at its next
                # check, not run on before the bump
                self.engine.increment_epoch()
                self.stop.set()

    def finish(self) -> None:
        with self.guard:
            self.active = False
        self.done.set()
        self.stop.set()


class _CellError(Exception):
    """A cell ended in a way the user must hear about; carries the Jupyter error fields."""

    def __init__(self, reason: str, ename: str, evalue: str, traceback: list[str] | None = None,
                 **extra: Any):
        super().__init__(evalue)
        self.reason, self.ename, self.evalue = reason, ename, evalue
        self.traceback = traceback or [f"{ename}: {evalue}"]
        self.extra = extra


class WasmRuntime:
    """All Wasm cells of one Keep.  Thread-safe: :meth:`run` blocks (call it on a worker thread),
    :meth:`interrupt` may be called from any thread."""

    def __init__(self, *, memory_bytes: int = DEFAULT_MEMORY, data_dir: str | None = None,
                 scratch_root: str | None = None,
                 cache_size: int = MODULE_CACHE_SIZE, opt_level: str = "speed",
                 epoch: bool = True, fast_tier: bool = True):
        self.memory_bytes = memory_bytes
        self.data_dir = data_dir
        self.scratch_root = scratch_root  # where each run's scratch folder is made
        self._opt_level = opt_level
        # epoch=False only in the fast-tier worker, which its Keep stops by killing it
        self._epoch = epoch
        self._fast_tier = fast_tier and epoch and os.name == "posix"
        self._fast: Any = None  # the fast-tier worker (fastcells.FastWorker), made on demand
        self._fast_running = False
        self._last_s: OrderedDict[str, float] = OrderedDict()  # digest → its last run's seconds
        self._engines: dict[bool, wt.Engine] = {}
        self._linkers: dict[bool, wt.Linker] = {}
        self._native: dict[bool, wt.Linker] = {}  # plain WASI, for wasmtime's own poll_oneoff
        self._helpers: dict[bool, wt.Module] = {}
        self._modules: OrderedDict[tuple[bool, str], wt.Module] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()  # engines, linkers, module cache
        self._run_lock = threading.Lock()  # one cell at a time
        self._cell: _Cell | None = None
        self._cell_lock = threading.Lock()
        self._watch_cv = threading.Condition()
        self._watched: _Cell | None = None
        self._watcher: threading.Thread | None = None
        self.engine  # the plain engine exists from the start: one per Keep
        self.stats = {"compiled": 0, "cache_hits": 0}

    # ------------------------------------------------------------------ engines, linkers, modules

    @property
    def engine(self) -> wt.Engine:
        return self._engine(False)

    def _engine(self, metered: bool) -> wt.Engine:
        with self._lock:
            eng = self._engines.get(metered)
            if eng is None:
                cfg = wt.Config()
                cfg.epoch_interruption = self._epoch
                cfg.consume_fuel = metered
                cfg.cranelift_opt_level = self._opt_level
                eng = self._engines[metered] = wt.Engine(cfg)
                self._linkers[metered] = self._make_linker(eng)
                self._native[metered] = wt.Linker(eng)
                self._native[metered].define_wasi()
            return eng

    def _make_linker(self, engine: wt.Engine) -> wt.Linker:
        linker = wt.Linker(engine)
        linker.define_wasi()
        linker.allow_shadowing = True
        i32 = wt.ValType.i32()
        linker.define_func("wasi_snapshot_preview1", "poll_oneoff",
                           wt.FuncType([i32] * 4, [i32]), self._poll_oneoff, access_caller=True)
        return linker

    def _poll_module(self, metered: bool) -> wt.Module:
        with self._lock:
            mod = self._helpers.get(metered)
        if mod is None:
            mod = wt.Module(self._engine(metered), wt.wat2wasm(_POLL_HELPER_WAT))
            with self._lock:
                self._helpers[metered] = mod
        return mod

    def compile(self, module: bytes, *, metered: bool = False) -> wt.Module:
        """The compiled module for these bytes, from the LRU cache or compiled now.
        Raises :class:`wasmtime.WasmtimeError` for an invalid module."""
        digest = hashlib.sha256(module).hexdigest()
        key = (metered, digest)
        with self._lock:
            mod = self._modules.get(key)
            if mod is not None:
                self._modules.move_to_end(key)
                self.stats["cache_hits"] += 1
                return mod
        engine = self._engine(metered)
        mod = wt.Module(engine, bytes(module))
        with self._lock:
            self._modules[key] = mod
            self._modules.move_to_end(key)
            while len(self._modules) > self._cache_size:
                self._modules.popitem(last=False)
            self.stats["compiled"] += 1
        return mod

    # ------------------------------------------------------------------ host functions

    def _poll_oneoff(self, caller: wt.Caller, subs: int, events: int, nsubs: int,
                     nevents: int) -> int:
        """Clock subscriptions only: sleep on the cell's stop event (an interrupt or the deadline
        wakes it).  Any descriptor subscription: wasmtime's own poll_oneoff, which checks the
        descriptors against the program's fd table (a bad one is an EBADF event)."""
        cell = self._cell
        mem = caller.get("memory")
        if not isinstance(mem, wt.Memory):
            return _EFAULT
        if nsubs == 0:
            return _EINVAL
        try:
            raw = mem.read(caller, subs, subs + 48 * nsubs)
        except Exception:
            return _EFAULT
        subscriptions = list(struct.iter_unpack("<QB7xIxxxxQQH6x", raw))
        if any(tag != 0 for _u, tag, *_rest in subscriptions):
            if cell is None or cell.native is None:
                return _EINVAL
            return self._native_poll(cell, caller, mem, raw, events, nsubs, nevents)
        ready: list[tuple[int, int, int, int]] = []
        clocks = []
        for userdata, _tag, which, timeout, _prec, flags in subscriptions:
            if flags & 1:  # absolute time
                now = time.time_ns() if which == 0 else time.monotonic_ns()
                timeout = max(0, timeout - now)
            clocks.append((timeout, userdata))
        if clocks:
            wait_ns = min(c[0] for c in clocks)
            if cell is not None:
                cell.stop.wait(wait_ns / 1e9)
            else:
                time.sleep(wait_ns / 1e9)
            ready = [(u, 0, 0, 0) for t, u in clocks if t <= wait_ns]
        out = b"".join(struct.pack("<QHB5xQH6x", u, err, typ, nbytes, 0)
                       for u, err, typ, nbytes in ready)
        try:
            mem.write(caller, out, events)
            mem.write(caller, struct.pack("<I", len(ready)), nevents)
        except Exception:
            return _EFAULT
        return _SUCCESS

    def _native_poll(self, cell: _Cell, caller: wt.Caller, mem: wt.Memory, raw: bytes,
                     events: int, nsubs: int, nevents: int) -> int:
        """wasmtime's own poll_oneoff, through a helper instance in the cell's store (the same
        WASI context, so the same fd table): a host function cannot call a WASI import with the
        guest's memory, so the subscriptions are copied into the helper's memory and back."""
        if cell.poll_helper is None:
            linker, module = cell.native
            exports = linker.instantiate(caller, module).exports(caller)
            cell.poll_helper = (exports["memory"], exports["poll"])
        hmem, hpoll = cell.poll_helper
        ev_at = len(raw)
        n_at = ev_at + 32 * nsubs
        need = n_at + 8
        try:
            have = hmem.data_len(caller)
            if need > have:
                hmem.grow(caller, (need - have + WASM_PAGE - 1) // WASM_PAGE)
            hmem.write(caller, raw, 0)
            errno = int(hpoll(caller, 0, ev_at, nsubs, n_at))
            if errno != _SUCCESS:
                return errno
            (count,) = struct.unpack("<I", hmem.read(caller, n_at, n_at + 4))
            count = min(count, nsubs)
            mem.write(caller, hmem.read(caller, ev_at, ev_at + 32 * count), events)
            mem.write(caller, struct.pack("<I", count), nevents)
        except (wt.WasmtimeError, ValueError, IndexError):
            return _EFAULT
        return _SUCCESS

    # ------------------------------------------------------------------ running a cell

    def interrupt(self) -> bool:
        """Stop the running cell, if any (its guest traps within a few ms).  True if one was."""
        with self._cell_lock:
            if self._fast_running:
                self._fast.stop_reason = "interrupted"
                self._fast.stop.set()
                return True
            cell = self._cell
            if cell is None:
                return False
            cell.halt("interrupted")
            return True

    def run(self, module: bytes, *, invoke: str | None = None,
            args: list[int | float] | tuple = (), emit: Emit, timeout_s: float,
            fuel: int | None = None, output_bytes: int = DEFAULT_OUTPUT,
            memory_bytes: int | None = None, wasi: WasiInput | None = None) -> dict:
        """Run one Wasm cell to its end and return ``{"ok", "reason", ...}``.

        ``reason`` is one of ``ok``, ``exit`` (non-zero exit code), ``trap``, ``memory``,
        ``timeout``, ``interrupted``, ``fuel``, ``invalid_module``, ``no_start``, ``no_export``,
        ``bad_args``, ``scratch`` (its files passed the limit).  Every failure was also emitted
        as an ``error`` event."""
        wasi = wasi or WasiInput()
        with self._run_lock:
            memory_bytes = memory_bytes or self.memory_bytes
            digest = hashlib.sha256(module).hexdigest() if self._fast_tier and fuel is None else None
            if digest is not None and self._last_s.get(digest, 0.0) >= _fast_min_s():
                fast = self._fast_worker()
                if fast.ready():
                    with self._cell_lock:
                        self._fast_running = True
                    try:
                        status = fast.run(module, invoke=invoke, args=list(args or []), emit=emit,
                                          timeout_s=timeout_s, output_bytes=output_bytes,
                                          memory_bytes=memory_bytes, wasi=wasi)
                    finally:
                        with self._cell_lock:
                            self._fast_running = False
                    return status  # it stays in the fast tier: only in-process runs count
                fast.start_soon()  # this run stays here; the next one may go there
            status = self._run_locked(module, invoke, list(args or []), emit, timeout_s, fuel,
                                      output_bytes, memory_bytes, wasi)
            if digest is not None:
                self._remember(digest, status)
                if status.get("elapsed_s", 0.0) >= _fast_min_s():
                    self._fast_worker().start_soon()
            return status

    def _fast_worker(self) -> Any:
        if self._fast is None:
            from keepbook.keep.inside.fastcells import FastWorker

            self._fast = FastWorker(self.data_dir, self.scratch_root)
        return self._fast

    def _remember(self, digest: str, status: dict) -> None:
        if status.get("reason") in ("ok", "exit"):
            self._last_s[digest] = float(status.get("elapsed_s", 0.0))
            self._last_s.move_to_end(digest)
            while len(self._last_s) > 4 * self._cache_size:
                self._last_s.popitem(last=False)

    def close(self) -> None:
        """Stop the fast-tier worker, if one was started."""
        if self._fast is not None:
            self._fast.kill()

    def _run_locked(self, module: bytes, invoke: str | None, args: list, emit: Emit,
                    timeout_s: float, fuel: int | None, output_bytes: int,
                    memory_bytes: int, wasi_in: WasiInput) -> dict:
        started = time.monotonic()
        metered = fuel is not None
        output = _Output(emit, output_bytes)
        status: dict[str, Any]
        cell: _Cell | None = None
        store: wt.Store | None = None
        exports: Any = None
        private = tempfile.mkdtemp(prefix="keep-run-", dir=self.scratch_root)
        try:
            try:
                compiled = self.compile(module, metered=metered)
            except wt.WasmtimeError as e:
                raise _CellError("invalid_module", "InvalidModule",
                                 f"the module is not valid WebAssembly: {_first_line(e)}",
                                 _lines(e))
            engine = self._engine(metered)
            linker = self._linkers[metered]
            func, params = self._pick_entry(compiled, invoke)
            values = _convert_args(invoke or "_start", params, args)

            store = wt.Store(engine)
            scratch = os.path.join(private, "scratch")
            os.mkdir(scratch, 0o700)
            store.set_wasi(self._wasi_config(invoke, wasi_in, output, private, scratch))
            store.set_limits(memory_size=memory_bytes)
            if self._epoch:
                store.set_epoch_deadline(1)
            if metered:
                store.set_fuel(fuel)
            cell = _Cell(output, engine, deadline=time.monotonic() + timeout_s, scratch=scratch,
                         scratch_limit=memory_bytes,
                         native=(self._native[metered], self._poll_module(metered)))
            with self._cell_lock:
                self._cell = cell
            self._watch(cell)
            try:
                try:
                    instance = linker.instantiate(store, compiled)
                except wt.Trap:
                    raise
                except wt.WasmtimeError as e:
                    if "memory" in str(e) and ("limit" in str(e) or "minimum" in str(e)):
                        raise _CellError(
                            "memory", "MemoryLimitExceeded",
                            f"the module needs more memory than the Keep's memory limit of "
                            f"{_human(memory_bytes)}", _lines(e))
                    raise _CellError("invalid_module", "LinkError",
                                     f"the module cannot be instantiated: {_first_line(e)}",
                                     _lines(e))
                exports = instance.exports(store)
                results = None
                if invoke is not None and invoke != "_start" and "_initialize" in exports:
                    init = exports["_initialize"]
                    if isinstance(init, wt.Func):
                        init(store)
                results = exports[func](store, *values)
                exit_code = 0
            except wt.ExitTrap as e:
                exit_code, results = e.code, None
            except (wt.Trap, wt.WasmtimeError) as e:
                raise self._explain(e, cell, store, exports, memory_bytes, fuel)
            output.flush(final=True)
            used = _dir_bytes(scratch)
            if used > memory_bytes:
                raise _CellError("scratch", "ScratchLimitExceeded", _scratch_message(used, memory_bytes))
            if exit_code != 0:
                mem_hint = _memory_hint(store, instance_exports=exports, limit=memory_bytes)
                if mem_hint:
                    raise _CellError("memory", "MemoryLimitExceeded", mem_hint,
                                     exit_code=exit_code)
                raise _CellError("exit", "ExitCode", f"the module exited with code {exit_code}",
                                 exit_code=exit_code)
            status = {"ok": True, "reason": "ok", "exit_code": 0}
            if invoke is not None and results is not None:
                vals = results if isinstance(results, list) else [results]
                status["results"] = vals
                emit("execute_result", {"data": {"text/plain": _format_results(vals)},
                                        "metadata": {}})
        except _CellError as e:
            output.flush(final=True)
            emit("error", {"ename": e.ename, "evalue": e.evalue, "traceback": e.traceback})
            status = {"ok": False, "reason": e.reason, **e.extra}
        finally:
            if cell is not None:
                cell.finish()  # no epoch bump can follow this
                with self._cell_lock:
                    self._cell = None
                with self._watch_cv:
                    self._watch_cv.notify_all()
            shutil.rmtree(private, ignore_errors=True)  # the scratch folder and stdin file
        status["output_bytes"] = output.sent
        status["truncated"] = output.truncated
        status["elapsed_s"] = round(time.monotonic() - started, 6)
        if metered and store is not None:
            try:
                status["fuel_used"] = fuel - store.get_fuel()
            except wt.WasmtimeError:
                pass
        # Free the store (and with it wasmtime's output callbacks) now, while Python runs: a
        # store left to the garbage collector may be dropped by wasmtime's I/O thread at
        # interpreter exit, which then cannot call back into Python.
        if cell is not None:
            cell.native = None
        store = exports = cell = None
        return status

    def _wasi_config(self, invoke: str | None, wasi_in: WasiInput, output: _Output,
                     private: str, scratch: str) -> wt.WasiConfig:
        """The program's WASI world: argv, environment, stdin, output callbacks, preopens."""
        config = wt.WasiConfig()
        config.argv = [invoke or "cell.wasm", *wasi_in.argv]
        config.env = [list(pair) for pair in wasi_in.env]
        if wasi_in.stdin:
            path = os.path.join(private, "stdin")
            with open(path, "wb") as fh:
                fh.write(wasi_in.stdin)
            config.stdin_file = path
        config.stdout_custom = _writer(output, "stdout")
        config.stderr_custom = _writer(output, "stderr")
        config.preopen_dir(scratch, "/")  # fd 3: the program's own writable folder
        if self.data_dir is not None and _has_entries(self.data_dir):
            config.preopen_dir(self.data_dir, "/data", fs_mutable=False)
        return config

    def _watch(self, cell: _Cell) -> None:
        """Hand the cell to the runtime's one watcher thread (started on first use): it flushes
        coalesced output every FLUSH_S and enforces the deadline.  One long-lived thread, not
        one per cell: starting a thread costs milliseconds on a busy 2-core machine."""
        with self._watch_cv:
            self._watched = cell
            if self._watcher is None:
                self._watcher = threading.Thread(target=self._watch_loop,
                                                 name="keep-wasm-watcher", daemon=True)
                self._watcher.start()
            self._watch_cv.notify_all()

    def _watch_loop(self) -> None:
        while True:
            with self._watch_cv:
                cell = self._watched
                while cell is None or cell.done.is_set():
                    self._watch_cv.wait()
                    cell = self._watched
                left = cell.deadline - time.monotonic()
                if left > 0:
                    self._watch_cv.wait(min(FLUSH_S, left))
            if cell.done.is_set():
                continue
            now = time.monotonic()
            if now >= cell.deadline:
                cell.halt("timeout")
                continue
            if cell.output.pending:
                cell.output.flush()
            if cell.scratch and now - cell.scratch_checked >= SCRATCH_CHECK_S:
                cell.scratch_checked = now
                if _dir_bytes(cell.scratch) > cell.scratch_limit:
                    cell.halt("scratch")

    def _pick_entry(self, compiled: wt.Module, invoke: str | None) -> tuple[str, list[str]]:
        funcs = {e.name: e.type for e in compiled.exports if isinstance(e.type, wt.FuncType)}
        name = invoke or "_start"
        if name not in funcs:
            listing = ", ".join(sorted(funcs)) or "none"
            if invoke is None:
                raise _CellError(
                    "no_start", "NoEntryPoint",
                    "the module has no _start function (it is not a WASI command); "
                    f"use --invoke NAME to call one of its exported functions: {listing}")
            raise _CellError("no_export", "NoSuchExport",
                             f"the module exports no function named {invoke!r}; "
                             f"its exported functions are: {listing}")
        return name, [_kind(p) for p in funcs[name].params]

    def _explain(self, e: Exception, cell: _Cell, store: wt.Store, exports: Any,
                 memory_bytes: int, fuel: int | None) -> _CellError:
        code = e.trap_code if isinstance(e, wt.Trap) else None
        frames = _frames(e)
        if code == wt.TrapCode.INTERRUPT or (cell.reason and code is None and
                                            "interrupt" in str(e)):
            if cell.reason == "scratch":
                used = _dir_bytes(cell.scratch) if cell.scratch else 0
                return _CellError("scratch", "ScratchLimitExceeded",
                                  _scratch_message(used, cell.scratch_limit), frames)
            if cell.reason == "timeout":
                return _CellError("timeout", "TimeoutError",
                                  "the cell ran past its deadline and was stopped", frames)
            return _CellError("interrupted", "KeyboardInterrupt",
                              "the cell was interrupted", frames)
        if code == wt.TrapCode.OUT_OF_FUEL:
            return _CellError("fuel", "FuelExhausted",
                              f"the cell used up its fuel budget of {fuel} units and was stopped",
                              frames)
        name = _TRAP_NAMES.get(code) if code is not None else None
        hint = _memory_hint(store, exports, memory_bytes)
        if hint:
            return _CellError("memory", "MemoryLimitExceeded",
                              f"{hint} (the guest then trapped: {name or _first_line(e)})",
                              frames)
        if name is None:
            reason = _caused_by(e)
            text = _first_line(e) if not reason else f"{_first_line(e)}: {reason}"
            return _CellError("trap", "WasmTrap", text, frames)
        return _CellError("trap", "WasmTrap", f"wasm trap: {name}", frames, trap=name)




#: wasmtime's own poll_oneoff behind an export, with a memory of its own (see _native_poll)
_POLL_HELPER_WAT = """(module
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $p (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "poll") (param i32 i32 i32 i32) (result i32)
    (call $p (local.get 0) (local.get 1) (local.get 2) (local.get 3))))"""

_PREWARM_WAT = '(module (func (export "_start")))'


def prewarm() -> None:
    """Pay this process's one-time costs before the first cell needs them: wasmtime's import,
    Cranelift's and wasmtime's lazy initialisation (a first compile is several times slower
    than later ones) and the WASI linker.  Nothing of a cell is involved; a pooled Keep calls
    this while it waits for its Start, so a warm Keep's first Wasm cell costs what later ones
    do.  Safe to call from a background thread."""
    rt = WasmRuntime(fast_tier=False)
    rt.run(wt.wat2wasm(_PREWARM_WAT), emit=lambda kind, content: None, timeout_s=10)


def _fast_min_s() -> float:
    from keepbook.keep.inside.fastcells import FAST_TIER_MIN_S

    return FAST_TIER_MIN_S


def _memory_hint(store: wt.Store | None, instance_exports: Any, limit: int) -> str | None:
    """The memory-limit message, when a failed cell's linear memory is within reach of the limit
    (wasmtime refuses ``memory.grow`` quietly; this is how we tell the user why it failed)."""
    if store is None:
        return None
    try:
        cell_mem = _largest_memory(store, instance_exports)
    except Exception:
        return None
    if cell_mem is None:
        return None
    if cell_mem + max(limit // 4, 2 * WASM_PAGE) >= limit:
        return (f"exceeded the Keep's memory limit of {_human(limit)} "
                f"(linear memory was {cell_mem // MiB} MiB when a request to grow it was refused)")
    return None


def _largest_memory(store: wt.Store, exports: Any) -> int | None:
    if exports is None:
        return None
    best = None
    for ext in exports:  # ExportsMap iterates names
        item = exports[ext]
        if isinstance(item, wt.Memory):
            size = item.data_len(store)
            best = size if best is None else max(best, size)
    return best


def _convert_args(name: str, params: list[str], args: list) -> list:
    if len(args) != len(params):
        sig = ", ".join(params) or "no arguments"
        raise _CellError("bad_args", "TypeError",
                         f"{name} takes {len(params)} argument(s) ({sig}), "
                         f"but {len(args)} were given")
    out = []
    for i, (kind, value) in enumerate(zip(params, args)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _CellError("bad_args", "TypeError",
                             f"argument {i + 1} of {name} must be {kind}, got "
                             f"{type(value).__name__}")
        if kind in (_I32, _I64):
            if isinstance(value, float):
                if not value.is_integer():
                    raise _CellError("bad_args", "TypeError",
                                     f"argument {i + 1} of {name} must be an integer ({kind}), "
                                     f"got {value!r}")
                value = int(value)
            bits = 32 if kind == _I32 else 64
            if not -(1 << (bits - 1)) <= value < (1 << bits):
                raise _CellError("bad_args", "OverflowError",
                                 f"argument {i + 1} of {name} ({value}) does not fit in {kind}")
            if value >= 1 << (bits - 1):
                value -= 1 << bits  # unsigned spelling of a negative value
            out.append(wt.Val.i32(value) if kind == _I32 else wt.Val.i64(value))
        elif kind in (_F32, _F64):
            out.append(wt.Val.f32(float(value)) if kind == _F32 else wt.Val.f64(float(value)))
        else:
            raise _CellError("bad_args", "TypeError",
                             f"argument {i + 1} of {name} has type {kind}, which cells cannot pass")
    return out


def _format_results(values: list) -> str:
    shown = [repr(v) if isinstance(v, (int, float)) else str(v) for v in values]
    return shown[0] if len(shown) == 1 else ", ".join(shown)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _lines(e: BaseException) -> list[str]:
    return [line for line in str(e).splitlines() if line.strip()] or [type(e).__name__]


def _frames(e: BaseException) -> list[str]:
    """A Jupyter traceback: the error line, then the guest's wasm backtrace if wasmtime gave one."""
    lines = [_first_line(e)]
    frames = getattr(e, "frames", None)
    if frames:
        for f in frames[:32]:
            try:
                lines.append(f"  at {f.func_name or f'func[{f.func_index}]'} "
                             f"(module offset {f.module_offset:#x})")
            except Exception:
                break
    return lines


def _caused_by(e: BaseException) -> str:
    """wasmtime's reason for an error (the lines after "Caused by:"), joined."""
    lines = str(e).splitlines()
    for i, line in enumerate(lines):
        if line.strip() == "Caused by:":
            return "; ".join(x.strip() for x in lines[i + 1:] if x.strip())
    return ""


def _writer(output: _Output, name: str) -> Callable[[bytes], None]:
    """wasmtime's custom-output callback for one stream; it must never raise."""
    def write(data: bytes) -> None:
        try:
            output.write(name, bytes(data))
        except Exception:
            pass
    return write


def _has_entries(path: str) -> bool:
    try:
        with os.scandir(path) as it:
            return any(True for _ in it)
    except OSError:
        return False


def _dir_bytes(path: str) -> int:
    """The bytes a folder's files take (what a scratch folder costs the Keep)."""
    total = 0
    stack = [path]
    while stack:
        try:
            with os.scandir(stack.pop()) as it:
                for entry in it:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(entry.path)
                        else:
                            total += entry.stat(follow_symlinks=False).st_size
                    except OSError:
                        continue
        except OSError:
            continue
    return total


def _scratch_message(used: int, limit: int) -> str:
    return (f"the cell's files in its scratch folder took {_human(used)}, past the Keep's memory "
            f"limit of {_human(limit)}; they were removed")
