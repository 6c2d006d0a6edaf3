"""``%load_ext keepbook``: the Keep from an ordinary IPython kernel.

Gives ``%keep new|status|list|close``, ``%attest [--explain] [--json]``, ``%upload PATH`` (a
dataset sealed to the Keep, read-only under /data) and a ``%%keep`` cell magic that runs the
cell in the Keep's Python session.  The rest of the notebook stays ordinary
host Python; only ``%%keep`` cells travel, and only after the Keep has attested.

It shares the keepbook kernel's client code: the magics are parsed by
:mod:`keepbook.kernel.magics`, Keeps are driven by :class:`~keepbook.kernel.agent.ClientAgent`
(which runs its I/O on its own loop thread) and shown by :mod:`keepbook.kernel.widgets`.

Outputs are published from the main thread only: the agent's sink puts events in a queue that
the magic drains while the cell runs, so streams appear live and in the right cell.
"""

from __future__ import annotations

import atexit
import json
import queue
import sys
import threading
from concurrent.futures import Future
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, line_magic, magics_class
from IPython.display import display

from keepbook.keep.shared import protocol
from keepbook.keep.shared.evidence.trust import TrustVector
from keepbook.kernel import magics as mg
from keepbook.kernel import presenting as show
from keepbook.kernel.presenting import jupyter_mime, new_keep_spec
from keepbook.kernel.agent import ClientAgent
from keepbook.kernel.client import AttestationRefused, KeepError
from keepbook.kernel.trust_policy import TrustPolicyError

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


def _show_trust_vector(tv: TrustVector, explain: bool = False) -> None:
    display(show.trust_vector_bundle(tv, explain), raw=True)


def _remark(text: str) -> None:
    print(f"[keepbook] {text}", file=sys.stderr, flush=True)


@magics_class
class KeepMagics(Magics):
    """The magics; one :class:`ClientAgent` (and its embedded keep manager) per IPython kernel,
    started on first use and stopped when the kernel exits."""

    def __init__(self, shell: Any):
        super().__init__(shell)
        self._agent: ClientAgent | None = None
        self._agent_lock = threading.Lock()

    # ------------------------------------------------------------------ agent life
    @property
    def agent(self) -> ClientAgent:
        with self._agent_lock:
            if self._agent is None:
                self._agent = ClientAgent()
                atexit.register(self.stop)
            return self._agent

    def stop(self) -> None:
        """Close the Keeps and stop the embedded keep manager (idempotent)."""
        with self._agent_lock:
            agent, self._agent = self._agent, None
        if agent is not None:
            atexit.unregister(self.stop)
            agent.stop()

    def _call(self, coro: Any) -> Any:
        return self.agent.call(coro)

    # ------------------------------------------------------------------ magics
    @line_magic
    def attest(self, line: str) -> None:
        """%attest [--explain] [--json] — verify the current Keep's evidence; show the trust vector."""
        with _clear_errors():
            m = mg.parse_line_magic(f"%attest {line}")
            self._ensure_keep()
            try:
                result = self._call(self.agent.attest())
            except AttestationRefused as exc:
                _show_trust_vector(exc.result.vector)
                raise KeepCellError(str(exc)) from None
            if m.args.save:
                from keepbook.kernel.attestation import save_attestation
                print(f"Attestation saved to {save_attestation(result, m.args.save)} "
                      "(for `keepbook seal --keep-evidence`)")
            if m.args.json:
                display({"application/json": result.vector.to_json(),
                         "text/plain": json.dumps(result.vector.to_json(), indent=1)}, raw=True)
            else:
                _show_trust_vector(result.vector, m.args.explain)

    @line_magic
    def upload(self, line: str) -> None:
        """%upload PATH [--as NAME] — seal a dataset to the attested Keep; it appears read-only
        at /data/NAME for %%keep cells."""
        with _clear_errors():
            m = mg.parse_line_magic(f"%upload {line}")
            self._ensure_keep()
            r = self._call(self.agent.upload(m.args.path, m.args.name))
            print(show.upload_receipt(m.args.path, r), end="")

    @line_cell_magic
    def keep(self, line: str, cell: str | None = None) -> Any:
        """%keep new|status|list|close [options] — manage Keeps (options as in the keepbook kernel).
        %%keep [--timeout S] — run this cell as Python inside the current Keep."""
        with _clear_errors():
            if cell is None:
                self._keep_line(mg.parse_line_magic(f"%keep {line}"))
                return None
            args = mg.parse_keep_cell(line)
            return self._run_cell(cell, args.timeout)

    def _keep_line(self, m: mg.LineMagic, implicit: bool = False) -> None:
        agent = self.agent
        if m.sub == "new":
            session = self._call(agent.new_keep(new_keep_spec(m.args)))
            if implicit:
                _remark(f"Keep {session.id} created (backend {session.info.backend}, "
                        f"profile {session.info.profile}).")
            else:
                print(f"Keep {session.id} created: backend {session.info.backend}, profile "
                      f"{session.info.profile}, manager {session.manager.url}\n"
                      "Not attested yet: `%attest` (or the first %%keep cell) verifies it before "
                      "anything is sent.")
        elif m.sub == "status":
            status = self._call(agent.status())
            display(show.status_bundle(status), raw=True)
        elif m.sub == "list":
            keeps = self._call(agent.list())
            current = agent.current.id if agent.current else None
            print("\n".join(f"{'*' if k.id == current else ' '} {k.id}  {k.backend:<8} "
                            f"{k.profile:<10} {k.state}" for k in keeps) or "(no Keeps)")
        elif m.sub == "close":
            print(f"Keep {self._call(agent.close(m.args.id))} closed.")

    def _ensure_keep(self) -> None:
        if self.agent.current is None:
            _remark("No Keep yet: creating one with the defaults (embedded manager, backend "
                    "sim-snp, profile staging).")
            self._keep_line(mg.parse_line_magic("%keep new"), implicit=True)

    # ------------------------------------------------------------------ %%keep
    def _run_cell(self, code: str, timeout_s: float | None) -> KeepResult | None:
        self._ensure_keep()
        agent = self.agent
        session = agent.current
        if session is not None and session.attestation is None:
            try:
                result = self._call(agent.attest())
            except AttestationRefused as exc:
                _show_trust_vector(exc.result.vector)
                raise KeepCellError(f"{exc} (nothing was sent to the Keep)") from None
            _remark(f"Attested {result.vector.kind} evidence: VERIFIED — {result.vector.label} "
                    "(`%attest` shows the trust vector)")
        if not code.strip():
            return None
        events: "queue.Queue[Any]" = queue.Queue()
        fut: Future = agent.submit(agent.run("python", events.put, code=code, timeout_s=timeout_s))
        fut.add_done_callback(lambda _f: events.put(_DONE))
        out = _CellOutput()
        interrupted = False
        while True:
            try:
                event = events.get(timeout=0.1)
            except queue.Empty:
                continue
            except KeyboardInterrupt:  # Ctrl-C / the stop button: stop the cell in the Keep
                if interrupted:  # a second Ctrl-C: stop waiting for the Keep
                    raise
                interrupted = True
                agent.submit(agent.interrupt())
                try:
                    fut.result(INTERRUPT_WAIT_S)
                except Exception:
                    pass
                if not fut.done():
                    raise
                continue
            if event is _DONE:
                break
            out.publish(event)
        status = fut.result()  # KeepError if the channel broke
        out.flush()
        if not status.get("ok", False):
            raise out.failure(str(status.get("reason") or "the cell failed"))
        return out.result


class _CellOutput:
    """Publishes one cell's events (on the main thread) and remembers what the end needs."""

    def __init__(self) -> None:
        self.result: KeepResult | None = None
        self.errors: list[dict] = []

    def publish(self, event: protocol.Event) -> None:
        c = event.content
        if event.kind == "stream":
            stream = sys.stderr if c.get("name") == "stderr" else sys.stdout
            stream.write(str(c.get("text", "")))
            stream.flush()
        elif event.kind == "display_data":
            display(jupyter_mime(c.get("data")), raw=True, metadata=c.get("metadata") or None)
        elif event.kind == "execute_result":
            self.result = KeepResult(jupyter_mime(c.get("data")), c.get("metadata") or {})
        elif event.kind == "error":
            if self.errors:  # more than one: the earlier ones as text, the last one raised
                _print_error(self.errors[-1])
            self.errors.append(c)
        elif event.kind == "notice":
            _remark(str(c.get("text", "")))

    def flush(self) -> None:
        sys.stdout.flush()
        sys.stderr.flush()

    def failure(self, reason: str) -> KeepCellError:
        if not self.errors:
            return KeepCellError(f"the cell failed in the Keep ({reason})")
        e = self.errors[-1]
        tb = e.get("traceback")
        return guest_error(str(e.get("ename", "Error")), str(e.get("evalue", "")),
                           [str(x) for x in tb] if isinstance(tb, list) and tb else None)


def _print_error(e: dict) -> None:
    tb = e.get("traceback")
    lines = [str(x) for x in tb] if isinstance(tb, list) and tb else [f"{e.get('ename')}: {e.get('evalue')}"]
    print("\n".join(lines), file=sys.stderr, flush=True)


class _clear_errors:
    """Turn keepbook's expected failures into short errors: usage errors as IPython's
    ``UsageError``, Keep and policy errors as :class:`KeepCellError` — no host traceback."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, etype: Any, exc: BaseException | None, tb: Any) -> bool:
        if exc is None or isinstance(exc, (KeepCellError, KeyboardInterrupt)):
            return False
        if isinstance(exc, mg.MagicError):
            raise UsageError(str(exc)) from None
        if isinstance(exc, AttestationRefused):
            _show_trust_vector(exc.result.vector)
            raise guest_error("AttestationFailed", str(exc)) from None
        if isinstance(exc, (KeepError, TrustPolicyError)):
            raise guest_error("KeepError", str(exc)) from None
        return False


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
