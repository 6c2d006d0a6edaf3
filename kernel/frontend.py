"""One front end for both adapters: the keepbook kernel and ``%load_ext keepbook``.

Everything between "the user ran this" and "this is what to show" lives here, once: parsing
the magics, making a Keep when there is none, attesting before anything is sent, compiling,
running the cell, and turning the Keep's events into output.  An adapter gives a
:class:`Screen` — how a Jupyter IOPub message is shown where it runs — and calls one coroutine
per user action; it only renders.

A cell's path reads top to bottom: :meth:`Frontend.execute` → :meth:`Frontend._run_in_keep`
→ :meth:`~keepbook.kernel.agent.ClientAgent.events` → the attested channel, and each event
back through :meth:`Frontend._show` to the screen, on the caller's event loop.
"""

from __future__ import annotations

import asyncio
import json
import os
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from keepbook.keep.shared import protocol
from keepbook.keep.shared.evidence.trust import TrustVector
from keepbook.keep.shared.dataset_format import DatasetError
from keepbook.kernel import completion, data_folder, ipython_events
from keepbook.kernel import magics as mg
from keepbook.kernel import presenting as show
from keepbook.kernel.agent import NEW_KEEP_DEFAULTS, ClientAgent
from keepbook.kernel.client import AttestationRefused, KeepError
from keepbook.kernel.trust_policy import TrustPolicyError
from keepbook.kernel.wasi_input import wasi_input

COMPILED = ("c", "cpp", "zig", "rust")
#: how often the front end asks about releases waiting for the data owner (between cells)
REVIEW_POLL_S = 2.0


class Screen(Protocol):
    """Where output goes: one Jupyter IOPub message at a time (``stream``, ``display_data``,
    ``update_display_data``, ``execute_result``, ``error``)."""

    def publish(self, kind: str, content: dict) -> None: ...


@dataclass
class Outcome:
    """How a user action ended, for the adapter's reply (``execute_reply``, a raised error)."""

    ok: bool = True
    ename: str = ""
    evalue: str = ""
    traceback: list[str] = field(default_factory=list)
    #: the cell's value as the Keep rendered it (``execute_result`` content), if any
    result: dict | None = None
    #: execute-reply payloads, as ipykernel sends them (``obj?``: a ``page``)
    payload: list[dict] = field(default_factory=list)

    def reply(self, execution_count: int) -> dict:
        if self.ok:
            return {"status": "ok", "execution_count": execution_count,
                    "payload": self.payload, "user_expressions": {}}
        return {"status": "error", "execution_count": execution_count, "ename": self.ename,
                "evalue": self.evalue, "traceback": self.traceback}


class CellFailed(Exception):
    """The cell ended in an error the Keep already reported (shown as it arrived)."""


class CompileFailed(Exception):
    """The cell did not compile on the client; nothing was sent."""


class Frontend:
    def __init__(self, agent: ClientAgent, screen: Screen):
        self.agent = agent
        self.screen = screen
        self.params: dict[str, Any] = {}  # the notebook's parameters (papermill), for magic lines
        self._python_started: set[str] = set()
        self._shown_error: dict | None = None  # the error this action already showed
        #: releases waiting for the data owner: (Keep id, request id) → the display to update
        self._pending: dict[tuple[str, int], str] = {}
        self._watcher: asyncio.Task | None = None
        self._owners: dict[tuple, Any] = {}  # %review: one verified owner session per Keep
        self._cell_code = ""  # the running cell's text (for the data-folder hint)

    # ------------------------------------------------------------------ user actions
    async def execute(self, code: str) -> Outcome:
        """A whole keepbook-kernel cell: leading ``%line`` magics, then a ``%%cell`` magic or
        Python for the Keep."""
        self._cell_code = code

        async def act() -> Outcome:
            params = mg.parse_parameters(code)
            if params is not None:  # kept by the kernel, for `{name}` in magic lines
                self.params.update(params)
                self._remark("notebook parameters: " + ", ".join(f"{k}={v!r}" for k, v in params.items()))
                return Outcome()
            cell = mg.parse_cell(code, self.params)
            for magic in cell.magics:
                await self._line_magic(magic)
            if cell.cell_magic is not None:
                return await self._cell_magic(cell.cell_magic)
            if cell.python.strip():
                return await self._run_in_keep("python", code=cell.python)
            return Outcome()
        return await self._guard(act)

    async def magic(self, line: str) -> Outcome:
        """One line magic (``%keep …``, ``%attest …``, ``%upload …``, ``%audit …``)."""
        return await self._guard(lambda: self._line_magic(mg.parse_line_magic(line)))

    async def python(self, code: str, timeout_s: float | None = None) -> Outcome:
        """Python for the Keep's session (``%%keep`` in the IPython extension)."""
        async def act() -> Outcome:
            await self._ensure_keep()
            await self._ensure_attested()
            if not code.strip():
                return Outcome()
            return await self._run_in_keep("python", code=code, timeout_s=timeout_s)
        return await self._guard(act)

    async def interrupt(self) -> bool:
        """Stop the running cell in the Keep (never a signal to a host process)."""
        return await self.agent.interrupt()

    async def complete(self, code: str, cursor_pos: int) -> dict:
        hit = mg.complete_magic(code, cursor_pos)
        if hit is not None:
            matches, start, end = hit
        else:
            reply = await self.agent.ask_if_open("complete", {"code": code, "cursor_pos": cursor_pos})
            if not (reply and isinstance(reply.get("matches"), list)):
                return completion.complete_offline(code, cursor_pos)  # no Keep session (yet)
            matches = reply["matches"]
            start = reply.get("cursor_start", cursor_pos)
            end = reply.get("cursor_end", cursor_pos)
        return {"status": "ok", "matches": matches, "cursor_start": start, "cursor_end": end,
                "metadata": {}}

    async def inspect(self, code: str, cursor_pos: int) -> dict:
        reply = await self.agent.ask_if_open("inspect", {"code": code, "cursor_pos": cursor_pos})
        if reply and reply.get("found"):
            return {"status": "ok", "found": True, "data": show.jupyter_mime(reply.get("data")),
                    "metadata": {}}
        return {"status": "ok", "found": False, "data": {}, "metadata": {}}

    # ------------------------------------------------------------------ errors, once
    async def _guard(self, act: Any) -> Outcome:
        """Run one action; every failure becomes one shown error and an :class:`Outcome`."""
        self._shown_error = None
        try:
            await self.refresh_reviews()
            out = await act()
            return out if isinstance(out, Outcome) else Outcome()
        except mg.MagicError as exc:
            return self._fail("UsageError", str(exc))
        except AttestationRefused as exc:
            self._display(show.trust_vector_bundle(exc.result.vector))
            return self._fail("AttestationFailed", str(exc))
        except (KeepError, TrustPolicyError) as exc:
            return self._fail("KeepError", str(exc))
        except CompileFailed as exc:
            return self._fail("CompileError", str(exc))
        except CellFailed as exc:
            if self._shown_error is not None:  # the reply names the Keep's own error
                e = self._shown_error
                return Outcome(False, e["ename"], e["evalue"], e["traceback"])
            return self._fail("CellError", str(exc))
        except Exception as exc:  # a keepbook bug: say so, stay alive
            return self._fail(type(exc).__name__, f"keepbook internal error: {exc}",
                              traceback.format_exception(exc))

    def _fail(self, ename: str, evalue: str, tb: list[str] | None = None) -> Outcome:
        tb = tb or [f"{ename}: {evalue}"]
        if self._shown_error is None:
            self._error(ename, evalue, tb)
        return Outcome(False, ename, evalue, tb)

    # ------------------------------------------------------------------ output
    def _stream(self, text: str, name: str = "stdout") -> None:
        self.screen.publish("stream", {"name": name, "text": text})

    def _remark(self, text: str) -> None:
        self._stream(f"[keepbook] {text}\n", "stderr")

    def _display(self, data: dict, metadata: dict | None = None) -> None:
        self.screen.publish("display_data", {"data": data, "metadata": metadata or {}, "transient": {}})

    def _error(self, ename: str, evalue: str, tb: list[str]) -> None:
        content = {"ename": ename, "evalue": evalue, "traceback": tb}
        self.screen.publish("error", content)
        self._shown_error = content

    def _progress(self, label: str, total: int | None = None) -> show.Progress:
        return show.Progress(self.screen.publish, label, total)

    def _show(self, event: protocol.Event, outcome: Outcome) -> None:
        """One Keep event as output (the Keep's policy already decided it may leave)."""
        c = event.content
        meta = c.get("metadata") if event.kind == "display_data" else None
        label = meta.get("keepbook") if isinstance(meta, dict) else None
        review = label.get("review") if isinstance(label, dict) else None
        if isinstance(review, dict) and isinstance(review.get("id"), int) and self.agent.current:
            self._pending_release(self.agent.current.id, review["id"], c)  # updated in place
            return
        if ipython_events.publish(event, self.screen.publish, outcome.payload):
            return
        if event.kind == "stream":
            name = c.get("name") if c.get("name") in ("stdout", "stderr") else "stdout"
            self._stream(str(c.get("text", "")), name)
        elif event.kind == "execute_result":
            outcome.result = {"data": show.jupyter_mime(c.get("data")), "metadata": c.get("metadata") or {}}
            self.screen.publish("execute_result", dict(outcome.result))
        elif event.kind == "error":
            tb = c.get("traceback")
            self._error(str(c.get("ename", "Error")), str(c.get("evalue", "")),
                        [str(x) for x in tb] if isinstance(tb, list) and tb else
                        [f"{c.get('ename', 'Error')}: {c.get('evalue', '')}"])
            hint = data_folder.hint(c, self._cell_code, Path.cwd())
            if hint:  # a file next to the notebook, not in the Keep
                self._stream(hint + "\n", "stderr")
        elif event.kind == "notice":
            self._remark(str(c.get("text", "")))

    # ------------------------------------------------------------------ releases under review
    def _pending_release(self, keep_id: str, rid: int, content: dict) -> None:
        """Show "waiting for review" as a display that is updated in place once decided."""
        display_id = f"keepbook-review-{keep_id}-{rid}"
        self._pending[(keep_id, rid)] = display_id
        self.screen.publish("display_data", {"data": show.jupyter_mime(content.get("data")),
                                             "metadata": content.get("metadata") or {},
                                             "transient": {"display_id": display_id}})
        self._watch()

    async def refresh_reviews(self) -> int:
        """Ask the Keep how the owner decided the releases shown as pending; update each decided
        one in place — the approved value, or the owner's reason.  How many were updated."""
        session = self.agent.current
        mine = sorted(rid for (k, rid) in self._pending if session is not None and k == session.id)
        if not mine or session is None or not session.handshake.channel_open or self.agent.running_cell:
            return 0
        try:
            reply = await session.open_channel("ask about releases under review").request(
                "reviews", {"ids": mine}, timeout=10.0)
        except KeepError:
            return 0
        updated = 0
        for r in reply.get("reviews") or []:
            key = (session.id, r.get("id"))
            if key not in self._pending or r.get("state") == "pending":
                continue
            display_id = self._pending.pop(key)
            if r.get("state") == "approved" and isinstance(r.get("data"), dict):
                data, meta = show.jupyter_mime(r["data"]), r.get("metadata") or {}
            elif r.get("state") == "approved":  # approved, but the Keep's rules withheld it now
                data, meta = {"text/plain": str(r.get("notice") or "approved, but withheld")}, {}
            else:
                data, meta = show.rejected_release(int(r["id"]), str(r.get("reason") or "")), {}
            self.screen.publish("update_display_data", {"data": data, "metadata": meta,
                                                        "transient": {"display_id": display_id}})
            updated += 1
        return updated

    def _watch(self) -> None:
        """While releases wait for review, look every few seconds (between cells)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if self._watcher is None or self._watcher.done():
            self._watcher = loop.create_task(self._watch_loop())

    async def _watch_loop(self) -> None:
        while self._pending:
            await asyncio.sleep(REVIEW_POLL_S)
            try:
                await self.refresh_reviews()
            except Exception:
                return  # a watcher never takes the notebook down; the next cell asks again

    # ------------------------------------------------------------------ the owner's review
    async def _review_magic(self, m: mg.LineMagic) -> None:
        """%review: the data owner reviews from a notebook (their own key, expectations and
        attestation; the same requests as `keepbook review`)."""
        from keepbook.kernel.owner_review import ReviewError, describe

        owner = await self._owner_session(m.args)
        try:
            if m.sub is None or m.sub == "list":
                requests = await owner.list()
                decide = self._decider(owner) if m.sub is None else None
                self._display(show.review_bundle(requests, decide))
            elif m.sub == "show":
                self._stream(describe(await owner.show(m.args.id)) + "\n")
            else:
                shown = await owner.show(m.args.id)
                decision = "approve" if m.sub == "approve" else "reject"
                done = await owner.decide(m.args.id, decision, shown["value_digest"],
                                          " ".join(m.args.reason))
                self._stream(f"#{m.args.id} {done.get('state')} (you are {owner.owner})\n")
        except ReviewError as exc:
            raise KeepError(str(exc)) from None
        await self.refresh_reviews()

    async def _owner_session(self, args: Any) -> Any:
        from keepbook.kernel import dataset_sealer, owner_cli
        from keepbook.kernel.owner_review import OwnerSession

        session = self.agent.require_current()
        keep_id = args.keep_id or session.id
        key = (keep_id, args.owner_key, args.profile, args.keep_fingerprint, args.allow_simulated,
               args.trust_policy)
        if key not in self._owners:
            try:
                owner_key = dataset_sealer.load_or_create_owner_key(args.owner_key)[0]
                expect = owner_cli.owner_expectation(args)
            except SystemExit as exc:
                raise KeepError(str(exc)) from None
            except Exception as exc:
                raise KeepError(f"%review: {exc}") from None
            self._owners[key] = await OwnerSession.attest(session.manager, keep_id, expect, owner_key)
        return self._owners[key]

    def _decider(self, owner: Any) -> Any:
        """The widget's buttons: send the decision on the loop that owns the owner session."""
        loop = asyncio.get_running_loop()

        def decide(rid: int, decision: str, reason: str, done: Any) -> None:
            async def go() -> None:
                try:
                    shown = await owner.show(rid)
                    r = await owner.decide(rid, decision, shown["value_digest"], reason)
                    done(f"#{rid} {r.get('state')}")
                except Exception as exc:
                    done(f"not sent: {exc}")
            asyncio.run_coroutine_threadsafe(go(), loop)
        return decide

    # ------------------------------------------------------------------ line magics
    async def _line_magic(self, m: mg.LineMagic) -> None:
        if m.name == "keep":
            await self._keep_magic(m)
        elif m.name == "attest":
            await self._ensure_keep()
            result = await self.agent.attest()
            if m.args.save:
                self._stream(f"Attestation saved to {self._save_attestation(result, m.args.save)} "
                             "(for `keepbook seal --keep-evidence`)\n")
            if m.args.json:
                self._display({"application/json": result.vector.to_json(),
                               "text/plain": json.dumps(result.vector.to_json(), indent=1)})
            else:
                self._show_vector(result.vector, m.args.explain, result.fingerprint)
        elif m.name == "upload":
            await self._upload(m.args.path, m.args.name)
        elif m.name == "review":
            await self._review_magic(m)
        elif m.name == "audit":
            await self._ensure_keep()
            log = await self.agent.audit()
            current = self.agent.current.id if self.agent.current else "keep"
            saved = show.save_audit(current, log.raw, m.args.save)
            self._display(show.audit_bundle(log, saved))
        else:
            raise mg.MagicError(f"%{m.name} is not available in this version of keepbook")

    def _show_vector(self, tv: TrustVector, explain: bool = False, fingerprint: str | None = None) -> None:
        self._display(show.trust_vector_bundle(tv, explain, fingerprint))

    @staticmethod
    def _save_attestation(result: Any, path: str) -> str:
        from keepbook.kernel.attestation import save_attestation

        try:
            return save_attestation(result, path)
        except OSError as exc:
            raise KeepError(f"cannot save the attestation to {path}: {exc.strerror}") from None

    async def _keep_magic(self, m: mg.LineMagic, implicit: bool = False) -> None:
        if m.sub == "new":
            spec = show.new_keep_spec(m.args)
            bar = self._progress(f"creating a {spec.backend} Keep ({spec.profile})")
            try:
                session = await self.agent.new_keep(spec)
            except BaseException:
                bar.done(f"could not create a {spec.backend} Keep", ok=False)
                raise
            bar.done(f"Keep {session.id} created")
            if implicit:  # the user's cell output stays on stdout; our remarks go to stderr
                self._remark(f"Keep {session.id} created (backend {session.info.backend}, "
                             f"profile {session.info.profile}).")
            else:
                self._stream(f"Keep {session.id}: backend {session.info.backend}, profile "
                             f"{session.info.profile}, manager {session.manager.url}\n"
                             "Not attested yet: `%attest` (or the first cell) verifies it before "
                             "anything is sent.\n")
            announced = session.sim_trust.announcement() if session.sim_trust else None
            if announced:
                self._remark(announced)
        elif m.sub == "status":
            self._display(show.status_bundle(await self.agent.status()))
            budgets = await self.agent.budgets()
            if budgets:
                self._display(show.budget_bundle(budgets))
        elif m.sub == "list":
            keeps = await self.agent.list()
            current = self.agent.current.id if self.agent.current else None
            lines = [f"{'*' if k.id == current else ' '} {k.id}  {k.backend:<8} {k.profile:<10} {k.state}"
                     for k in keeps] or ["(no Keeps)"]
            self._stream("\n".join(lines) + "\n")
        elif m.sub == "close":
            self._stream(f"Keep {await self.agent.close(m.args.id)} closed.\n")

    async def _upload(self, path: str, name: str | None) -> None:
        """%upload PATH [--as NAME]: sealed to the attested Keep, streamed; read-only at /data.
        A folder goes whole: its files keep their paths under /data/FOLDER."""
        await self._ensure_keep()
        await self._ensure_attested()
        if Path(path).expanduser().is_dir():
            return await self._upload_folder(Path(path).expanduser(), name)
        try:
            size: int | None = os.path.getsize(os.path.expanduser(path))
        except OSError:
            size = None
        bar = self._progress(f"uploading {path}", total=size)
        try:
            receipt = await self.agent.upload(path, name, progress=bar.update)
        except BaseException:
            bar.done(f"upload of {path} failed", ok=False)
            raise
        bar.done(f"uploaded {path}")
        self._stream(show.upload_receipt(path, receipt))

    async def _upload_folder(self, folder: Path, name: str | None) -> None:
        try:
            files = data_folder.folder_files(folder, name)
        except DatasetError as exc:
            raise KeepError(str(exc)) from None
        total = sum(f.stat().st_size for f, _ in files)
        bar = self._progress(f"uploading {folder} ({len(files)} files)", total=total)
        done = 0
        try:
            for file, dataset in files:
                await self.agent.upload(file, dataset,
                                        progress=lambda sent, b=done: bar.update(b + sent))
                done += file.stat().st_size
        except BaseException:
            bar.done(f"upload of {folder} failed after {done:,} bytes", ok=False)
            raise
        top = files[0][1].split("/")[0]
        bar.done(f"uploaded {folder}")
        self._stream(f"Sealed {len(files)} files ({total:,} bytes) to the Keep under /data/{top}/ "
                     f"(read-only; the Keep's Python runs in /data, so paths like "
                     f"{files[0][1]} work unchanged)\n")

    # ------------------------------------------------------------------ Keeps made and attested
    async def _ensure_keep(self) -> None:
        if self.agent.current is None:
            self._remark(f"No Keep yet: creating one with the defaults ({NEW_KEEP_DEFAULTS}).")
            await self._keep_magic(mg.parse_line_magic("%keep new"), implicit=True)

    async def _ensure_attested(self) -> None:
        session = self.agent.current
        if session is not None and session.attestation is None:
            bar = self._progress("attesting the Keep (fresh nonce, evidence, verification)")
            try:
                result = await self.agent.attest()
            except BaseException:
                bar.done("attestation failed — nothing was sent", ok=False)
                raise
            bar.done(f"attested: {result.vector.kind} evidence VERIFIED — {result.vector.label} "
                     "(`%attest` shows the trust vector)")

    # ------------------------------------------------------------------ cells
    async def _cell_magic(self, m: mg.CellMagic) -> Outcome:
        if m.name not in ("wat", "wasm", *COMPILED):
            raise mg.MagicError(f"%%{m.name} is not a cell magic keepbook runs")
        bar = self._progress(f"compiling the {m.name} cell to wasm32-wasi on this machine") \
            if m.name in COMPILED else None
        try:
            module = await asyncio.to_thread(self._compile, m)
        except BaseException:
            if bar:
                bar.done(f"{m.name} compilation failed", ok=False)
            raise
        if bar:
            bar.done(f"compiled {len(module):,} bytes of Wasm")
        return await self._run_in_keep("wasm", module=module, invoke=m.invoke, args=m.invoke_args,
                                       timeout_s=m.args.timeout, fuel=m.args.fuel,
                                       **wasi_input(m))

    def _compile(self, m: mg.CellMagic) -> bytes:
        """Client-side: turn the cell into a Wasm module.  Compile errors stop here — nothing sent."""
        from keepbook.kernel import compilers

        try:
            if m.name == "wasm":
                return compilers.decode_wasm_cell(m.body, m.args.file)
            flags = list(getattr(m.args, "flags", []) or [])
            opt = f"-O{m.args.opt}" if hasattr(m.args, "opt") else "-O2"
            result = compilers.compile_cell(m.name, m.body, flags=flags, opt=opt,
                                            verbose=getattr(m.args, "verbose", False),
                                            reactor=m.invoke is not None)
        except compilers.CompileError as exc:
            raise CompileFailed(f"{exc}\n(nothing was sent to the Keep)") from None
        if result.log.strip():  # with --verbose the log starts with the compiler command
            self.screen.publish("stream", {"name": "stderr", "text": result.log if
                                           result.log.endswith("\n") else result.log + "\n"})
        return result.module

    async def _run_in_keep(self, kind: str, **cell: Any) -> Outcome:
        """Make and attest a Keep if needed, send the cell, show its events as they come."""
        await self._ensure_keep()
        await self._ensure_attested()
        session = self.agent.current
        warmup = None
        if kind == "python" and session is not None and session.id not in self._python_started:
            self._python_started.add(session.id)
            warmup = self._progress("starting Python in the Keep")
        outcome = Outcome()
        status: dict = {}
        try:
            async for event in self.agent.events(kind, **cell):
                if warmup is not None:
                    warmup.done("Python is running in the Keep")
                    warmup = None
                if event.kind == "status":
                    status = event.content
                else:
                    self._show(event, outcome)
        except BaseException:
            if warmup is not None:
                warmup.done("Python did not start in the Keep", ok=False)
            raise
        if not status.get("ok", False):
            raise CellFailed(str(status.get("reason") or "the cell failed"))
        return outcome
