"""The keepbook Jupyter kernel: a thin adapter.  Jupyter messages in, one call to the client
agent, outputs out.  It is not an IPython kernel on purpose: magics, completion and execution
must never run user code on the user's host — cells run in the Keep."""

from __future__ import annotations

import asyncio
import codeop
import json
import traceback
from typing import Any, Awaitable, Callable

from ipykernel.kernelbase import Kernel

from keepbook import __version__
from keepbook.keep import protocol
from keepbook.keep.evidence.trust import TrustVector
from keepbook.kernel import magics as mg
from keepbook.kernel.agent import ClientAgent, NewKeep
from keepbook.kernel.client import AttestationRefused, KeepError
from keepbook.kernel.trust_policy import TrustPolicyError
from keepbook.kernel import widgets as ui


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
        self._error_shown = False

    # ------------------------------------------------------------------ output helpers
    def _stream(self, text: str, name: str = "stdout") -> None:
        self.send_response(self.iopub_socket, "stream", {"name": name, "text": text})

    def _display(self, data: dict, metadata: dict | None = None) -> None:
        self.send_response(self.iopub_socket, "display_data",
                           {"data": data, "metadata": metadata or {}, "transient": {}})

    def _error(self, ename: str, evalue: str, tb: list[str] | None = None) -> None:
        self.send_response(self.iopub_socket, "error",
                           {"ename": ename, "evalue": evalue, "traceback": tb or [f"{ename}: {evalue}"]})
        self._error_shown = True

    def _widget(self, widget_factory: Callable[[], Any], text: str, html: str) -> None:
        data: dict[str, Any] = {"text/plain": text, "text/html": html}
        try:
            widget = widget_factory()
            data.update({k: v for k, v in widget._repr_mimebundle_().items() if k != "text/plain"})
        except Exception:  # widgets unavailable: the HTML and text still tell everything
            pass
        self._display(data)

    def _show_trust_vector(self, tv: TrustVector, explain: bool = False) -> None:
        text = tv.to_text() + ("\n\nEvidence fields:\n" + ui.fields_text(tv) if explain else "")
        self._widget(lambda: ui.trust_vector_widget(tv, explain), text,
                     ui.trust_vector_html(tv, explain))

    def _publish_event(self, event: protocol.Event) -> None:
        c = event.content
        if event.kind == "stream":
            name = c.get("name") if c.get("name") in ("stdout", "stderr") else "stdout"
            self._stream(str(c.get("text", "")), name)
        elif event.kind == "display_data":
            self._display(_mime(c.get("data")), c.get("metadata") or {})
        elif event.kind == "execute_result":
            self.send_response(self.iopub_socket, "execute_result",
                               {"data": _mime(c.get("data")), "metadata": c.get("metadata") or {},
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
        self._error_shown = False
        try:
            cell = mg.parse_cell(code)
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
            return self._fail("CellError", str(exc), show=not self._error_shown)
        except Exception as exc:  # a kernel bug: say so, stay alive
            tb = traceback.format_exception(exc)
            return self._fail(type(exc).__name__, f"keepbook internal error: {exc}", tb)
        return {"status": "ok", "execution_count": self.execution_count, "payload": [],
                "user_expressions": {}}

    def _fail(self, ename: str, evalue: str, tb: list[str] | None = None, show: bool = True) -> dict:
        if show and not self._error_shown:
            self._error(ename, evalue, tb)
        return {"status": "error", "execution_count": self.execution_count, "ename": ename,
                "evalue": evalue, "traceback": tb or [f"{ename}: {evalue}"]}

    async def _line_magic(self, m: mg.LineMagic) -> None:
        if m.name == "keep":
            await self._keep_magic(m)
        elif m.name == "attest":
            await self._ensure_keep()
            result = await self._in_agent(self.agent.attest())
            if m.args.json:
                self._display({"application/json": result.vector.to_json(),
                               "text/plain": json.dumps(result.vector.to_json(), indent=1)})
            else:
                self._show_trust_vector(result.vector, m.args.explain)
        elif m.name == "upload":
            await self._upload(m.args.path, m.args.name)
        elif m.name == "audit":
            await self._audit()
        else:
            raise mg.MagicError(f"%{m.name} is not available yet in this version of keepbook")

    async def _upload(self, path: str, name: str | None) -> None:
        """%upload PATH [--as NAME]: sealed to the attested Keep, streamed; read-only at /data."""
        await self._ensure_keep()
        r = await self._in_agent(self.agent.upload(path, name))
        self._stream(f"Uploaded {path} → {r['path']} in the Keep ({r['bytes']} bytes, sealed and "
                     f"verified in the Keep)\n  digest {r['digest']}\n  owner  {r['owner']}\n"
                     f"  owner's policy {r['policy_digest']} — now in force with the Keep's "
                     f"(release required: {r['policy'].get('release_required')}, min rows: "
                     f"{r['policy'].get('min_rows')})\n")

    async def _audit(self) -> None:
        """%audit: fetch the Keep's log, verify chain + signature + binding, show a table."""
        await self._ensure_keep()
        log = await self._in_agent(self.agent.audit())
        saved = _save_audit(self.agent.current.id if self.agent.current else "keep", log.raw)
        rows = log.table()
        text = "\n".join([*(f"✔ {c}" for c in log.checks),
                          *(f"{r['seq']:>4}  {r['time']}  {r['kind']:<14} {r['detail']}" for r in rows),
                          f"(saved for `keepbook audit verify`: {saved})"])
        import html as _html
        body = "".join(f"<tr><td>{r['seq']}</td><td>{r['time']}</td><td>{_html.escape(r['kind'])}"
                       f"</td><td style='text-align:left'>{_html.escape(str(r['detail']))}</td></tr>"
                       for r in rows)
        checks = "".join(f"<li>✔ {_html.escape(c)}</li>" for c in log.checks)
        self._display({"text/plain": text, "text/html":
                       f"<b>Audit log — verified</b><ul>{checks}</ul><table><thead><tr><th>#</th>"
                       f"<th>time</th><th>kind</th><th>detail</th></tr></thead><tbody>{body}"
                       f"</tbody></table><small>saved: {_html.escape(str(saved))}</small>"})

    async def _keep_magic(self, m: mg.LineMagic, implicit: bool = False) -> None:
        if m.sub == "new":
            a = m.args
            policy = b""
            if a.policy:
                try:
                    with open(a.policy, "rb") as fh:
                        policy = fh.read()
                except OSError as exc:
                    raise KeepError(f"cannot read output policy {a.policy}: {exc.strerror}") from None
            spec = NewKeep(backend=a.backend, profile=a.profile, manager=a.manager,
                           token_file=a.token_file, memory_bytes=a.memory, timeout_s=a.timeout,
                           output_bytes=a.output_cap, policy=policy, trust_policy=a.trust_policy)
            session = await self._in_agent(self.agent.new_keep(spec))
            if implicit:  # the user's cell output stays on stdout; our remarks go to stderr
                self._stream(f"[keepbook] Keep {session.id} created (backend {session.info.backend}, "
                             f"profile {session.info.profile}).\n", "stderr")
            else:
                self._stream(f"Keep {session.id} created: backend {session.info.backend}, profile "
                             f"{session.info.profile}, manager {session.manager.url}\n"
                             "Not attested yet: `%attest` (or the first cell) verifies it before "
                             "anything is sent.\n")
        elif m.sub == "status":
            status = await self._in_agent(self.agent.status())
            self._widget(lambda: ui.status_widget(status), ui.status_text(status), ui.status_html(status))
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
            module = await asyncio.to_thread(self._compile, m)
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
        if getattr(m.args, "verbose", False):
            self._stream("$ " + " ".join(result.command) + "\n", "stderr")
        if result.log.strip():
            self._stream(result.log if result.log.endswith("\n") else result.log + "\n", "stderr")
        return result.module

    async def _run_in_keep(self, kind: str, **kwargs: Any) -> None:
        await self._ensure_keep()
        session = self.agent.current
        first_attest = session is not None and session.attestation is None
        if first_attest:
            result = await self._in_agent(self.agent.attest())
            self._stream(f"[keepbook] Attested {result.vector.kind} evidence: VERIFIED — {result.vector.label} "
                         "(`%attest` shows the trust vector)\n", "stderr")
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[protocol.Event] = asyncio.Queue()

        def sink(event: protocol.Event) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, event)

        fut = asyncio.wrap_future(self.agent.submit(self.agent.run(kind, sink, **kwargs)))
        while True:
            getter = asyncio.ensure_future(queue.get())
            done, _ = await asyncio.wait({getter, fut}, return_when=asyncio.FIRST_COMPLETED)
            if getter in done:
                self._publish_event(getter.result())
                continue
            getter.cancel()
            break
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
            return {"status": "ok", "found": True, "data": _mime(reply.get("data")), "metadata": {}}
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


def _save_audit(keep_id: str, raw: bytes) -> str:
    """Where `%audit` keeps the verified log for the data owner (``keepbook audit verify``)."""
    import os
    from pathlib import Path

    base = Path(os.environ.get("KEEPBOOK_AUDIT_DIR") or Path(
        os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share")) / "keepbook" / "audit")
    base.mkdir(parents=True, exist_ok=True)
    path = base / f"{keep_id}.audit.cbor"
    path.write_bytes(raw)
    return str(path)


def _mime(data: Any) -> dict:
    if not isinstance(data, dict):
        return {"text/plain": str(data)}
    out = {}
    for k, v in data.items():
        if isinstance(v, bytes):  # binary MIME types travel as bytes; Jupyter wants base64 text
            import base64
            v = base64.b64encode(v).decode()
        out[str(k)] = v
    return out
