"""The keepbook Jupyter kernel: a thin adapter.  Jupyter messages in, one call to the client
agent, outputs out.  It is not an IPython kernel on purpose: magics, completion and execution
must never run user code on the user's host — cells run in the Keep."""

from __future__ import annotations

import asyncio
import codeop
import json
import traceback
from typing import Any, Awaitable

from ipykernel.kernelbase import Kernel

from keepbook import __version__
from keepbook.keep.shared import protocol
from keepbook.keep.shared.evidence.trust import TrustVector
from keepbook.kernel import magics as mg
from keepbook.kernel.agent import ClientAgent
from keepbook.kernel.client import AttestationRefused, KeepError
from keepbook.kernel.trust_policy import TrustPolicyError
from keepbook.kernel import presenting as show


class CellFailed(Exception):
    """The cell ended in an error that was already shown to the user."""


class CompileFailed(Exception):
    """The cell did not compile on the client; nothing was sent."""


class KeepbookKernel(Kernel):
    implementation = "keepbook"
    implementation_version = __version__
    banner = ("keepbook — cells run inside an attested Keep (TEE).\n"
              "%keep new · %attest · %keep status|list|close · %upload · %audit · %%wat · %%wasm · %%c · %%cpp · %%zig")
    language_info = {
        "name": "python",
        "version": "3",
        "mimetype": "text/x-python",
        "file_extension": ".py",
        "codemirror_mode": {"name": "ipython", "version": 3},
        "pygments_lexer": "ipython3",
    }
    help_links = [{"text": "keepbook", "url": "https://github.com/keepbook/keepbook"}]

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        import comm
        import ipykernel.ipkernel  # noqa: F401  (installs ipykernel's comm implementation)

        self.comm_manager = comm.get_comm_manager()
        for msg_type in ("comm_open", "comm_msg", "comm_close"):
            self.shell_handlers[msg_type] = getattr(self.comm_manager, msg_type)
        self.agent = ClientAgent()
        # Start the embedded keep manager now, in the background: the first `%keep new` then
        # finds it running (and, with $KEEPBOOK_KEEPMGR_POOL set, a warm Keep waiting).
        self.agent.prestart_embedded()
        self._last_error: tuple[str, str, list[str]] | None = None  # the error this cell showed
        self._python_started: set[str] = set()
        self.params: dict[str, Any] = {}  # the notebook's parameters (papermill), for magic lines

    # ------------------------------------------------------------------ output helpers
    def _stream(self, text: str, name: str = "stdout") -> None:
        self.send_response(self.iopub_socket, "stream", {"name": name, "text": text})

    def _display(self, data: dict, metadata: dict | None = None) -> None:
        self.send_response(self.iopub_socket, "display_data",
                           {"data": data, "metadata": metadata or {}, "transient": {}})

    def _error(self, ename: str, evalue: str, tb: list[str] | None = None) -> None:
        tb = tb or [f"{ename}: {evalue}"]
        self.send_response(self.iopub_socket, "error", {"ename": ename, "evalue": evalue, "traceback": tb})
        self._last_error = (ename, evalue, tb)

    def _show_trust_vector(self, tv: TrustVector, explain: bool = False) -> None:
        self._display(show.trust_vector_bundle(tv, explain))

    def _progress(self, label: str, total: int | None = None) -> show.Progress:
        return show.Progress(lambda kind, content: self.send_response(self.iopub_socket, kind, content),
                             label, total)

    def _publish_event(self, event: protocol.Event) -> None:
        c = event.content
        if event.kind == "stream":
            name = c.get("name") if c.get("name") in ("stdout", "stderr") else "stdout"
            self._stream(str(c.get("text", "")), name)
        elif event.kind == "display_data":
            self._display(show.jupyter_mime(c.get("data")), c.get("metadata") or {})
        elif event.kind == "execute_result":
            self.send_response(self.iopub_socket, "execute_result",
                               {"data": show.jupyter_mime(c.get("data")), "metadata": c.get("metadata") or {},
                                "execution_count": self.execution_count})
        elif event.kind == "error":
            tb = c.get("traceback")
            self._error(str(c.get("ename", "Error")), str(c.get("evalue", "")),
                        [str(x) for x in tb] if isinstance(tb, list) else None)
        elif event.kind == "notice":
            self._stream(f"[keepbook] {c.get('text', '')}\n", "stderr")

    async def _in_agent(self, coro: Awaitable[Any]) -> Any:
        return await asyncio.wrap_future(self.agent.submit(coro))

    # ------------------------------------------------------------------ execute
    async def do_execute(self, code: str, silent: bool, store_history: bool = True,
                         user_expressions: dict | None = None, allow_stdin: bool = False,
                         *, cell_meta: Any = None, cell_id: Any = None) -> dict:
        self._last_error = None
        try:
            params = mg.parse_parameters(code)
            if params is not None:  # kept by the kernel, for `{name}` in magic lines
                self.params.update(params)
                self._stream("[keepbook] notebook parameters: " + ", ".join(
                    f"{k}={v!r}" for k, v in params.items()) + "\n", "stderr")
                return {"status": "ok", "execution_count": self.execution_count, "payload": [],
                        "user_expressions": {}}
            cell = mg.parse_cell(code, self.params)
            for magic in cell.magics:
                await self._line_magic(magic)
            if cell.cell_magic is not None:
                await self._cell_magic(cell.cell_magic)
            elif cell.python.strip():
                await self._run_in_keep("python", code=cell.python)
        except mg.MagicError as exc:
            return self._fail("UsageError", str(exc))
        except AttestationRefused as exc:
            self._show_trust_vector(exc.result.vector)
            return self._fail("AttestationFailed", str(exc))
        except (KeepError, TrustPolicyError) as exc:
            return self._fail("KeepError", str(exc))
        except CompileFailed as exc:
            return self._fail("CompileError", str(exc))
        except CellFailed as exc:
            if self._last_error is not None:  # the reply names the Keep's own error
                ename, evalue, tb = self._last_error
                return self._fail(ename, evalue, tb, show=False)
            return self._fail("CellError", str(exc))
        except Exception as exc:  # a kernel bug: say so, stay alive
            tb = traceback.format_exception(exc)
            return self._fail(type(exc).__name__, f"keepbook internal error: {exc}", tb)
        return {"status": "ok", "execution_count": self.execution_count, "payload": [],
                "user_expressions": {}}

    def _fail(self, ename: str, evalue: str, tb: list[str] | None = None, show: bool = True) -> dict:
        if show and self._last_error is None:
            self._error(ename, evalue, tb)
        return {"status": "error", "execution_count": self.execution_count, "ename": ename,
                "evalue": evalue, "traceback": tb or [f"{ename}: {evalue}"]}

    async def _line_magic(self, m: mg.LineMagic) -> None:
        if m.name == "keep":
            await self._keep_magic(m)
        elif m.name == "attest":
            await self._ensure_keep()
            result = await self._in_agent(self.agent.attest())
            if getattr(m.args, "save", None):
                saved = self._save_attestation(result, m.args.save)
                self._stream(f"Attestation saved to {saved} (for `keepbook seal --keep-evidence`)\n")
            if m.args.json:
                self._display({"application/json": result.vector.to_json(),
                               "text/plain": json.dumps(result.vector.to_json(), indent=1)})
            else:
                self._show_trust_vector(result.vector, m.args.explain)
        elif m.name == "upload":
            await self._upload(m.args.path, m.args.name)
        elif m.name == "audit":
            await self._audit(getattr(m.args, "save", None))
        else:
            raise mg.MagicError(f"%{m.name} is not available yet in this version of keepbook")

    def _save_attestation(self, result: Any, path: str) -> str:
        from keepbook.kernel.attestation import save_attestation

        try:
            return save_attestation(result, path)
        except OSError as exc:
            raise KeepError(f"cannot save the attestation to {path}: {exc.strerror}") from None

    async def _upload(self, path: str, name: str | None) -> None:
        """%upload PATH [--as NAME]: sealed to the attested Keep, streamed; read-only at /data."""
        await self._ensure_keep()
        await self._ensure_attested()
        import os as _os

        try:
            size = _os.path.getsize(_os.path.expanduser(path))
        except OSError:
            size = None
        bar = self._progress(f"uploading {path}", total=size)
        loop = asyncio.get_running_loop()

        def progress(sent: int) -> None:
            loop.call_soon_threadsafe(bar.update, sent)

        try:
            r = await self._in_agent(self.agent.upload(path, name, progress=progress))
        except BaseException:
            bar.done(f"upload of {path} failed", ok=False)
            raise
        bar.done(f"uploaded {path}")
        self._stream(show.upload_receipt(path, r))

    async def _audit(self, save_to: str | None = None) -> None:
        """%audit: fetch the Keep's log, verify chain + signature + binding, show a table."""
        await self._ensure_keep()
        log = await self._in_agent(self.agent.audit())
        saved = show.save_audit(self.agent.current.id if self.agent.current else "keep", log.raw, save_to)
        self._display(show.audit_bundle(log, saved))

    async def _keep_magic(self, m: mg.LineMagic, implicit: bool = False) -> None:
        if m.sub == "new":
            spec = show.new_keep_spec(m.args)
            bar = self._progress(f"creating a {spec.backend} Keep ({spec.profile})")
            try:
                session = await self._in_agent(self.agent.new_keep(spec))
            except BaseException:
                bar.done(f"could not create a {spec.backend} Keep", ok=False)
                raise
            bar.done(f"Keep {session.id} created")
            if implicit:  # the user's cell output stays on stdout; our remarks go to stderr
                self._stream(f"[keepbook] Keep {session.id} created (backend {session.info.backend}, "
                             f"profile {session.info.profile}).\n", "stderr")
            else:
                self._stream(f"Keep {session.id}: backend {session.info.backend}, profile "
                             f"{session.info.profile}, manager {session.manager.url}\n"
                             "Not attested yet: `%attest` (or the first cell) verifies it before "
                             "anything is sent.\n")
        elif m.sub == "status":
            status = await self._in_agent(self.agent.status())
            self._display(show.status_bundle(status))
        elif m.sub == "list":
            keeps = await self._in_agent(self.agent.list())
            current = self.agent.current.id if self.agent.current else None
            lines = [f"{'*' if k.id == current else ' '} {k.id}  {k.backend:<8} {k.profile:<10} {k.state}"
                     for k in keeps] or ["(no Keeps)"]
            self._stream("\n".join(lines) + "\n")
        elif m.sub == "close":
            closed = await self._in_agent(self.agent.close(m.args.id))
            self._stream(f"Keep {closed} closed.\n")

    async def _ensure_keep(self) -> None:
        if self.agent.current is None:
            self._stream("[keepbook] No Keep yet: creating one with the defaults (embedded manager, "
                         "backend sim-snp, profile staging).\n", "stderr")
            await self._keep_magic(mg.LineMagic("keep", mg._keep_new_parser().parse_args([]), "new"),
                                   implicit=True)

    async def _cell_magic(self, m: mg.CellMagic) -> None:
        a = m.args
        if m.name in ("wat", "wasm", "c", "cpp", "zig", "rust"):
            bar = self._progress(f"compiling the {m.name} cell to wasm32-wasi on this machine") \
                if m.name in ("c", "cpp", "zig", "rust") else None
            try:
                module = await asyncio.to_thread(self._compile, m)
            except BaseException:
                if bar:
                    bar.done(f"{m.name} compilation failed", ok=False)
                raise
            if bar:
                bar.done(f"compiled {len(module):,} bytes of Wasm")
            await self._run_in_keep("wasm", module=module, invoke=m.invoke, args=m.invoke_args,
                                    timeout_s=a.timeout, fuel=a.fuel)

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
            self._stream(result.log if result.log.endswith("\n") else result.log + "\n", "stderr")
        return result.module

    async def _ensure_attested(self) -> None:
        session = self.agent.current
        if session is not None and session.attestation is None:
            bar = self._progress("attesting the Keep (fresh nonce, evidence, verification)")
            try:
                result = await self._in_agent(self.agent.attest())
            except BaseException:
                bar.done("attestation failed — nothing was sent", ok=False)
                raise
            bar.done(f"attested: {result.vector.kind} evidence VERIFIED — {result.vector.label} "
                     "(`%attest` shows the trust vector)")

    async def _run_in_keep(self, kind: str, **kwargs: Any) -> None:
        await self._ensure_keep()
        await self._ensure_attested()
        session = self.agent.current
        warmup = None
        if kind == "python" and session is not None and session.id not in self._python_started:
            self._python_started.add(session.id)
            warmup = self._progress("starting Python in the Keep")
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[protocol.Event] = asyncio.Queue()

        def sink(event: protocol.Event) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, event)

        fut = asyncio.wrap_future(self.agent.submit(self.agent.run(kind, sink, **kwargs)))
        while True:
            getter = asyncio.ensure_future(queue.get())
            done, _ = await asyncio.wait({getter, fut}, return_when=asyncio.FIRST_COMPLETED)
            if getter in done:
                if warmup is not None:
                    warmup.done("Python is running in the Keep")
                    warmup = None
                self._publish_event(getter.result())
                continue
            getter.cancel()
            break
        if warmup is not None:
            warmup.done("Python is running in the Keep", ok=fut.exception() is None)
        while not queue.empty():
            self._publish_event(queue.get_nowait())
        status = fut.result()  # raises KeepError if the channel broke
        if not status.get("ok", False):
            raise CellFailed(str(status.get("reason") or "the cell failed"))

    # ------------------------------------------------------------------ other requests
    async def interrupt_request(self, stream: Any, ident: Any, parent: Any) -> None:
        """interrupt_mode is "message": stop the cell in the Keep, never signal the host."""
        self.agent.submit(self.agent.interrupt())
        self.session.send(stream, "interrupt_reply", {"status": "ok"}, parent, ident=ident)

    async def do_is_complete(self, code: str) -> dict:
        stripped = code.strip()
        if not stripped or stripped.startswith("%%"):
            return {"status": "complete" if not stripped.startswith("%%") or code.endswith("\n\n")
                    else "incomplete", "indent": ""}
        lines = [ln for ln in code.splitlines() if not ln.strip().startswith("%")]
        try:  # compile only — never executes anything on the host
            compiled = codeop.compile_command("\n".join(lines), symbol="exec")
        except (SyntaxError, ValueError, OverflowError):
            return {"status": "invalid"}
        if compiled is None:
            return {"status": "incomplete", "indent": "    " if code.rstrip().endswith(":") else ""}
        return {"status": "complete"}

    async def do_complete(self, code: str, cursor_pos: int) -> dict:
        hit = mg.complete_magic(code, cursor_pos)
        if hit is not None:
            matches, start, end = hit
            return {"status": "ok", "matches": matches, "cursor_start": start, "cursor_end": end,
                    "metadata": {}}
        reply = await self._guest_request("complete", code, cursor_pos)
        if reply and isinstance(reply.get("matches"), list):
            return {"status": "ok", "matches": reply["matches"],
                    "cursor_start": reply.get("cursor_start", cursor_pos),
                    "cursor_end": reply.get("cursor_end", cursor_pos), "metadata": {}}
        return {"status": "ok", "matches": [], "cursor_start": cursor_pos, "cursor_end": cursor_pos,
                "metadata": {}}

    async def do_inspect(self, code: str, cursor_pos: int, detail_level: int = 0,
                         omit_sections: Any = ()) -> dict:
        reply = await self._guest_request("inspect", code, cursor_pos)
        if reply and reply.get("found"):
            return {"status": "ok", "found": True, "data": show.jupyter_mime(reply.get("data")), "metadata": {}}
        return {"status": "ok", "found": False, "data": {}, "metadata": {}}

    async def _guest_request(self, op: str, code: str, cursor_pos: int) -> dict | None:
        """Completion and inspection are answered by the Keep's session — only once it is
        attested and provisioned; never by the host."""
        session = self.agent.current
        if session is None or session.channel is None or self.agent.running_cell:
            return None
        try:
            return await asyncio.wait_for(self._in_agent(
                self.agent.request(op, {"code": code, "cursor_pos": cursor_pos})), 5)
        except Exception:
            return None

    async def do_shutdown(self, restart: bool) -> dict:
        await asyncio.to_thread(self.agent.stop)
        return {"status": "ok", "restart": restart}
