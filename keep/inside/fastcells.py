"""The fast tier of the Wasm runtime: a child process of the Keep that runs Wasm cells on an
engine *without* epoch checks, and is killed to stop a cell.  Inside the Keep.

Why: epoch interruption puts a check (two loads, a compare, a branch to a call) on every loop
back-edge and function entry, and the call forces the register allocator to keep loop values
where a call cannot clobber them.  On the numeric C benchmark that doubled the run time (matrix
multiply: 0.12-0.13 s with epoch checks, 0.053-0.062 s without, gcc -O2 0.035-0.054 s).  The
checks exist only so that a cell can be stopped; a process can be stopped without them.

How (see :class:`keepbook.keep.inside.runtime.WasmRuntime`): a module's first run is always in
the Keep's own process, with epoch checks.  If it took at least ``FAST_TIER_MIN_S``, its later
runs go to this worker (started in the background; until it is ready they stay in-process).
Wasm cells keep no state between runs — every run is a fresh store — so where a run happens
changes nothing a cell can see.  The worker runs the very same runtime code (limits, output caps,
live output, trap explanations) and sends the events back over a pipe; the Keep enforces the
deadline and interrupts by SIGKILL and says so exactly as for an in-process cell.  Fuel-metered
cells never come here.  The pipe carries plaintext between two processes of the same Keep;
nothing reaches the host (the worker's stdin/stdout are private pipes, its stderr is the Keep's
/dev/null).

Frames: a 4-byte big-endian length, then CBOR.  Keep → worker ``{module, invoke, args,
timeout_s, output_bytes, memory_bytes}``; worker → Keep ``{"ready": true}`` once, then per cell
``{"e": kind, "c": content}``… and ``{"status": {...}}``.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Callable

from keepbook.keep.shared import protocol


Emit = Callable[[str, dict], None]

#: a module whose last run took at least this long runs in the worker next time; below it, the
#: pipe round trip (≈1 ms) would be a noticeable share of the run
FAST_TIER_MIN_S = 0.1
START_TIMEOUT_S = 30.0
POLL_S = 0.02  # how often a waiting Keep looks at its interrupt flag


def _write_frame(fd: int, obj: Any) -> None:
    buf = memoryview(protocol.encode_item_frame(obj))
    while buf:
        n = os.write(fd, buf)
        buf = buf[n:]


class _Reader:
    """Frames from a pipe (the one frame decoder), with a timeout per wait (the Keep's side)."""

    def __init__(self, fd: int):
        self.fd = fd
        self.decoder = protocol.FrameDecoder()
        self.ready: list[Any] = []

    def frame(self, timeout: float | None) -> Any:
        """The next frame's item; ``TimeoutError`` if none within ``timeout``; ``EOFError`` at
        the end; :class:`~keepbook.keep.shared.protocol.RemoteProtocolError` for a bad frame."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.ready:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([self.fd], [], [], wait)
            if not ready:
                raise TimeoutError
            chunk = os.read(self.fd, 1 << 20)
            if not chunk:
                raise EOFError
            self.decoder.feed(chunk)
            self.ready.extend(self.decoder.items())
        return self.ready.pop(0)


class FastWorker:
    """The Keep's side: one worker process, started on demand, replaced after it is killed."""

    def __init__(self, data_dir: str | None = None, scratch_root: str | None = None):
        self.data_dir = data_dir
        self.scratch_root = scratch_root
        self._proc: subprocess.Popen | None = None
        self._reader: _Reader | None = None
        self._ready = False
        self._starting = False
        self._lock = threading.Lock()
        self.stop = threading.Event()  # set by an interrupt of the cell in the worker
        self.stop_reason: str | None = None

    def ready(self) -> bool:
        with self._lock:
            return self._ready and self._proc is not None and self._proc.poll() is None

    def start_soon(self) -> None:
        """Start the worker on a background thread (no-op if it runs or is starting)."""
        with self._lock:
            if self._starting or (self._proc is not None and self._proc.poll() is None):
                return
            self._starting = True
        threading.Thread(target=self._start, name="keep-wasm-fast-start", daemon=True).start()

    def _start(self) -> None:
        try:
            cmd = [sys.executable, "-m", "keepbook.keep.inside.fastcells"]
            if self.data_dir is not None:
                cmd += ["--data-dir", self.data_dir]
            if self.scratch_root is not None:
                cmd += ["--scratch-root", self.scratch_root]
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.DEVNULL, close_fds=True)
            assert proc.stdout is not None
            reader = _Reader(proc.stdout.fileno())
            try:
                hello = reader.frame(START_TIMEOUT_S)
            except (TimeoutError, EOFError):
                hello = None
            if not (isinstance(hello, dict) and hello.get("ready")):
                _kill(proc)
                return
            with self._lock:
                self._proc, self._reader, self._ready = proc, reader, True
        except OSError:
            return
        finally:
            with self._lock:
                self._starting = False

    def kill(self) -> None:
        with self._lock:
            proc, self._proc, self._ready = self._proc, None, False
        if proc is not None:
            _kill(proc)

    def run(self, module: bytes, *, invoke: str | None, args: list, emit: Emit,
            timeout_s: float, output_bytes: int, memory_bytes: int, wasi: Any = None) -> dict:
        """Run one cell in the worker; the same status and events as an in-process run."""
        started = time.monotonic()
        with self._lock:
            proc, reader = self._proc, self._reader
        assert proc is not None and proc.stdin is not None and reader is not None
        self.stop.clear()
        self.stop_reason = None
        sent = {"bytes": 0, "truncated": False}
        try:
            _write_frame(proc.stdin.fileno(), {
                "module": bytes(module), "invoke": invoke, "args": list(args),
                # the worker's own deadline is a back-stop; the Keep kills it on time
                "timeout_s": float(timeout_s) + 5.0, "output_bytes": int(output_bytes),
                "memory_bytes": int(memory_bytes),
                "argv": list(wasi.argv) if wasi else [],
                "env": [list(p) for p in wasi.env] if wasi else [],
                "stdin": wasi.stdin if wasi else None})
        except OSError:
            self.kill()
            return self._lost(emit, started, sent, "the fast-tier worker was gone")
        deadline = started + timeout_s
        while True:
            if self.stop.is_set() or time.monotonic() >= deadline:
                reason = self.stop_reason if self.stop.is_set() else "timeout"
                self.kill()
                return self._stopped(emit, started, sent, reason or "interrupted")
            try:
                msg = reader.frame(min(POLL_S, max(0.0, deadline - time.monotonic())))
            except TimeoutError:
                continue
            except (EOFError, OSError, protocol.ProtocolError):
                code = proc.poll()
                self.kill()
                return self._lost(emit, started, sent, f"its process ended (code {code})")
            if not isinstance(msg, dict):
                continue
            if "status" in msg:
                status = dict(msg["status"])
                status["elapsed_s"] = round(time.monotonic() - started, 6)
                status["tier"] = "fast"
                return status
            kind, content = msg.get("e"), msg.get("c")
            if isinstance(kind, str) and isinstance(content, dict):
                if kind == "stream":
                    sent["bytes"] += len(str(content.get("text", "")).encode())
                elif kind == "notice" and content.get("reason") == "output_truncated":
                    sent["truncated"] = True
                emit(kind, content)

    @staticmethod
    def _stopped(emit: Emit, started: float, sent: dict, reason: str) -> dict:
        if reason == "timeout":
            ename, evalue = "TimeoutError", "the cell ran past its deadline and was stopped"
        else:
            reason, ename, evalue = "interrupted", "KeyboardInterrupt", "the cell was interrupted"
        emit("error", {"ename": ename, "evalue": evalue, "traceback": [f"{ename}: {evalue}"]})
        return {"ok": False, "reason": reason, "output_bytes": sent["bytes"],
                "truncated": sent["truncated"], "elapsed_s": round(time.monotonic() - started, 6),
                "tier": "fast"}

    @staticmethod
    def _lost(emit: Emit, started: float, sent: dict, why: str) -> dict:
        evalue = f"the cell's Wasm process failed: {why}"
        emit("error", {"ename": "WasmTrap", "evalue": evalue, "traceback": [evalue]})
        return {"ok": False, "reason": "trap", "output_bytes": sent["bytes"],
                "truncated": sent["truncated"], "elapsed_s": round(time.monotonic() - started, 6),
                "tier": "fast"}


def _kill(proc: subprocess.Popen) -> None:
    try:
        proc.kill()
    except OSError:
        pass
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        pass
    for f in (proc.stdin, proc.stdout):
        try:
            if f is not None:
                f.close()
        except OSError:
            pass


# ---------------------------------------------------------------------- the worker process


def _watch_parent(parent: int) -> None:
    """The worker never outlives its Keep, even mid-cell (a loop without end would burn on)."""
    while True:
        if os.getppid() != parent:
            os._exit(0)
        time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="keepbook.keep.inside.fastcells")
    ap.add_argument("--data-dir")
    ap.add_argument("--scratch-root")
    args = ap.parse_args(argv)
    # The frame channel is a private duplicate of fd 0/1; fds 0-2 then point at /dev/null, so
    # nothing in this process (wasmtime-py included) can print into the channel.
    ctrl_in, ctrl_out = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # stopped by the Keep, with SIGKILL
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()

    from keepbook.keep.inside.runtime import WasiInput, WasmRuntime

    rt = WasmRuntime(data_dir=args.data_dir, scratch_root=args.scratch_root, epoch=False,
                     fast_tier=False)
    reader = _Reader(ctrl_in)
    write_lock = threading.Lock()

    def emit(kind: str, content: dict) -> None:
        with write_lock:
            _write_frame(ctrl_out, {"e": kind, "c": content})

    _write_frame(ctrl_out, {"ready": True})
    while True:
        try:
            req = reader.frame(None)
        except (EOFError, OSError, protocol.ProtocolError):
            break
        status = rt.run(req["module"], invoke=req.get("invoke"), args=req.get("args") or [],
                        emit=emit, timeout_s=req["timeout_s"], output_bytes=req["output_bytes"],
                        memory_bytes=req["memory_bytes"],
                        wasi=WasiInput.of(req.get("argv"), req.get("env"), req.get("stdin")))
        with write_lock:
            _write_frame(ctrl_out, {"status": status})
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
