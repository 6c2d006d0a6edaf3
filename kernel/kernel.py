"""The keepbook Jupyter kernel: a thin adapter.  Jupyter messages in, one call to the front end
(:mod:`keepbook.kernel.frontend`), IOPub messages out.  It is not an IPython kernel on purpose:
magics, completion and execution must never run user code on the user's host — cells run in the
Keep.  Everything runs on ipykernel's own event loop; only an interrupt, which arrives on the
control thread, is handed over to that loop."""

from __future__ import annotations

import asyncio
from typing import Any

from ipykernel.kernelbase import Kernel

from keepbook import __version__
from keepbook.kernel import completion
from keepbook.kernel.agent import ClientAgent
from keepbook.kernel.frontend import Frontend


class KeepbookKernel(Kernel):
    implementation = "keepbook"
    implementation_version = __version__
    banner = ("keepbook — cells run inside an attested Keep (TEE).\n"
              "%keep new · %attest · %keep status|list|close · %upload · %audit · %review · %%wat · %%wasm · %%c · %%cpp · %%zig")
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
        self.frontend = Frontend(self.agent, self)
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop cells run on
        # Start the embedded keep manager now, in the background: the first `%keep new` then
        # finds it running (and, with $KEEPBOOK_KEEPMGR_POOL set, a warm Keep waiting).
        self.agent.prestart_embedded()

    @property
    def params(self) -> dict[str, Any]:
        """The notebook's parameters (papermill), for `{name}` in magic lines."""
        return self.frontend.params

    def publish(self, kind: str, content: dict) -> None:
        """The front end's screen: one IOPub message."""
        if kind == "execute_result":
            content = {**content, "execution_count": self.execution_count}
        self.send_response(self.iopub_socket, kind, content)

    async def do_execute(self, code: str, silent: bool, store_history: bool = True,
                         user_expressions: dict | None = None, allow_stdin: bool = False,
                         *, cell_meta: Any = None, cell_id: Any = None) -> dict:
        self._loop = asyncio.get_running_loop()
        outcome = await self.frontend.execute(code)
        return outcome.reply(self.execution_count)

    async def interrupt_request(self, stream: Any, ident: Any, parent: Any) -> None:
        """interrupt_mode is "message": stop the cell in the Keep, never signal the host.  The
        request arrives on the control thread; the cell runs on the shell's loop."""
        if self._loop is not None:
            asyncio.run_coroutine_threadsafe(self.frontend.interrupt(), self._loop)
        self.session.send(stream, "interrupt_reply", {"status": "ok"}, parent, ident=ident)

    async def do_is_complete(self, code: str) -> dict:
        return completion.is_complete(code)  # IPython's parser; nothing runs on the host

    async def do_complete(self, code: str, cursor_pos: int) -> dict:
        """Magics here; names from the Keep's session only once it is attested and provisioned,
        never from the host."""
        return await self.frontend.complete(code, cursor_pos)

    async def do_inspect(self, code: str, cursor_pos: int, detail_level: int = 0,
                         omit_sections: Any = ()) -> dict:
        return await self.frontend.inspect(code, cursor_pos)

    async def do_shutdown(self, restart: bool) -> dict:
        await self.agent.shutdown()
        return {"status": "ok", "restart": restart}
