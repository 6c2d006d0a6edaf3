"""``%load_ext keepbook``: the Keep from an ordinary IPython kernel.

Gives ``%keep new|status|list|close``, ``%attest [--explain] [--json]``, ``%upload PATH`` (a
dataset sealed to the Keep, read-only under /data), ``%audit``, ``%review`` (the data owner's
review widget and commands) and a ``%%keep`` cell magic that
runs the cell in the Keep's Python session.  The rest of the notebook stays ordinary host
Python; only ``%%keep`` cells travel, and only after the Keep has attested.

A thin adapter on the same front end as the keepbook kernel (:mod:`keepbook.kernel.frontend`):
parsing, auto-create, attest-first and the event-to-output mapping are there.  IPython runs a
magic synchronously and its output belongs to the main thread, so — the one place a second loop
is needed — the front end's coroutines run on the agent's loop thread while this thread shows
what they publish, as it arrives, and turns Ctrl-C into an interrupt of the cell in the Keep.
"""

from __future__ import annotations

import atexit
import queue
import sys
import threading
from concurrent.futures import Future
from typing import Any, Awaitable

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, line_magic, magics_class
from IPython.display import display, update_display

from keepbook.kernel import magics as mg
from keepbook.kernel.agent import ClientAgent
from keepbook.kernel.frontend import Frontend, Outcome

INTERRUPT_WAIT_S = 5.0  # after Ctrl-C: how long to wait for the Keep to stop the cell
_DONE = object()


class KeepCellError(Exception):
    """A ``%%keep`` cell or a keepbook magic failed.  Shown as its own short message (or the
    guest's traceback), never as a host traceback through keepbook's internals."""

    def __init__(self, evalue: str, traceback: list[str] | None = None):
        super().__init__(evalue)
        self.guest_traceback = traceback or [f"{type(self).__name__}: {evalue}"]

    def _render_traceback_(self) -> list[str]:  # IPython's hook for custom tracebacks
        return self.guest_traceback


_guest_error_types: dict[str, type[KeepCellError]] = {}


def guest_error(ename: str, evalue: str, traceback: list[str] | None = None) -> KeepCellError:
    """An exception named like the guest's (``ZeroDivisionError``) carrying its traceback, so
    the Jupyter ``error`` reads as the Keep's, not keepbook's."""
    name = ename if ename.isidentifier() else "KeepCellError"
    cls = _guest_error_types.get(name)
    if cls is None:
        cls = _guest_error_types[name] = type(name, (KeepCellError,), {"__module__": "keep"})
    return cls(evalue, traceback or [f"{name}: {evalue}"])


class KeepResult:
    """The cell's last expression, as the Keep rendered it: IPython shows it as the
    ``execute_result`` (and keeps it in ``Out``) from its MIME bundle."""

    def __init__(self, data: dict, metadata: dict):
        self.data, self.metadata = data, metadata

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> tuple[dict, dict]:
        return self.data, self.metadata

    def __repr__(self) -> str:
        return str(self.data.get("text/plain", "<output of a %%keep cell>"))


class _MainThreadScreen:
    """The front end's screen: messages are queued by the agent's loop thread and shown by the
    main thread (:meth:`show`), so output lands in the cell that runs."""

    def __init__(self) -> None:
        self.queue: "queue.Queue[Any]" = queue.Queue()
        self._errors = 0
        self._last_error: list[str] = []

    def publish(self, kind: str, content: dict) -> None:
        self.queue.put((kind, content))

    def show(self, item: Any) -> None:
        kind, c = item
        if kind == "stream":
            stream = sys.stderr if c.get("name") == "stderr" else sys.stdout
            stream.write(str(c.get("text", "")))
            stream.flush()
        elif kind == "display_data":
            display_id = (c.get("transient") or {}).get("display_id")
            display(c.get("data") or {}, raw=True, metadata=c.get("metadata") or None,
                    display_id=display_id)
        elif kind == "update_display_data":
            update_display(c.get("data") or {}, raw=True, metadata=c.get("metadata") or None,
                           display_id=(c.get("transient") or {}).get("display_id"))
        elif kind == "clear_output":
            from IPython.display import clear_output

            clear_output(wait=c.get("wait") is True)
        elif kind == "error":
            # the action's last error is raised (IPython shows it as the cell's error); an
            # earlier one, if a cell reported several, is printed when the next arrives
            if self._errors:
                print("\n".join(self._last_error), file=sys.stderr, flush=True)
            self._errors += 1
            self._last_error = [str(x) for x in c.get("traceback") or []]
        # execute_result: the cell's value, returned by the magic (Out[n])


@magics_class
class KeepMagics(Magics):
    """The magics; one :class:`ClientAgent` (and its embedded keep manager) per IPython kernel,
    started on first use and stopped when the kernel exits."""

    def __init__(self, shell: Any):
        super().__init__(shell)
        self._agent: ClientAgent | None = None
        self._frontend: Frontend | None = None
        self._screen = _MainThreadScreen()
        self._agent_lock = threading.Lock()

    # ------------------------------------------------------------------ agent life
    @property
    def agent(self) -> ClientAgent:
        return self.frontend.agent

    @property
    def frontend(self) -> Frontend:
        with self._agent_lock:
            if self._frontend is None:
                self._agent = ClientAgent()
                self._frontend = Frontend(self._agent, self._screen)
                atexit.register(self.stop)
            return self._frontend

    def stop(self) -> None:
        """Close the Keeps and stop the embedded keep manager (idempotent)."""
        with self._agent_lock:
            agent, self._agent, self._frontend = self._agent, None, None
        if agent is not None:
            atexit.unregister(self.stop)
            agent.stop()

    def _run(self, action: Awaitable[Outcome]) -> Outcome:
        """Run one front-end action on the agent's loop; show its output here as it comes.
        Ctrl-C interrupts the cell in the Keep; a second Ctrl-C stops waiting for it."""
        frontend = self.frontend
        self._screen._errors = 0
        fut: Future = frontend.agent.submit(action)
        fut.add_done_callback(lambda _f: self._screen.queue.put(_DONE))
        interrupted = False
        while True:
            try:
                item = self._screen.queue.get(timeout=0.1)
            except queue.Empty:
                continue
            except KeyboardInterrupt:
                if interrupted:
                    raise
                interrupted = True
                frontend.agent.submit(frontend.interrupt())
                try:
                    fut.result(INTERRUPT_WAIT_S)
                except Exception:
                    pass
                if not fut.done():
                    raise
                continue
            if item is _DONE:
                break
            self._screen.show(item)
        sys.stdout.flush()
        sys.stderr.flush()
        return fut.result()

    @staticmethod
    def _raise(outcome: Outcome) -> None:
        if outcome.ok:
            return
        if outcome.ename == "UsageError":
            raise UsageError(outcome.evalue)
        raise guest_error(outcome.ename, outcome.evalue, outcome.traceback or None)

    # ------------------------------------------------------------------ magics
    @line_magic
    def attest(self, line: str) -> None:
        """%attest [--explain] [--json] [--save FILE] — verify the current Keep's evidence; show
        the trust vector."""
        self._raise(self._run(self.frontend.magic(f"%attest {line}")))

    @line_magic
    def upload(self, line: str) -> None:
        """%upload PATH [--as NAME] — seal a dataset to the attested Keep; it appears read-only
        at /data/NAME for %%keep cells."""
        self._raise(self._run(self.frontend.magic(f"%upload {line}")))

    @line_magic
    def review(self, line: str) -> None:
        """%review [list|show N|approve N|reject N REASON] [--allow-simulated] … — review the
        analyst's releases as the data owner (with your owner key); a widget without a command."""
        self._raise(self._run(self.frontend.magic(f"%review {line}")))

    @line_magic
    def audit(self, line: str) -> None:
        """%audit [--save FILE] — the Keep's signed, hash-chained audit log, verified."""
        self._raise(self._run(self.frontend.magic(f"%audit {line}")))

    @line_cell_magic
    def keep(self, line: str, cell: str | None = None) -> Any:
        """%keep new|status|list|close [options] — manage Keeps (options as in the keepbook kernel).
        %%keep [--timeout S] — run this cell as Python inside the current Keep."""
        if cell is None:
            self._raise(self._run(self.frontend.magic(f"%keep {line}")))
            return None
        try:
            args = mg.parse_keep_cell(line)
        except mg.MagicError as exc:
            raise UsageError(str(exc)) from None
        outcome = self._run(self.frontend.python(cell, args.timeout))
        for page in outcome.payload:  # obj? in the cell: the pager, as IPython shows it
            from IPython.core import page as pager

            pager.page(page["data"])
        self._raise(outcome)
        if outcome.result is not None:
            return KeepResult(outcome.result["data"], outcome.result["metadata"])
        return None


_magics: KeepMagics | None = None


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext keepbook``: register the magics (once per shell)."""
    global _magics
    if _magics is None or _magics.shell is not ipython:
        _magics = KeepMagics(ipython)
    ipython.register_magics(_magics)


def unload_ipython_extension(ipython: Any) -> None:
    """``%unload_ext keepbook``: close the Keeps and stop the embedded keep manager."""
    if _magics is not None:
        _magics.stop()
