"""Drive a keepbook kernel through jupyter_client and collect what a frontend would show."""

from __future__ import annotations

import queue
import time
from dataclasses import dataclass, field
from typing import Any

from jupyter_client.manager import start_new_kernel


@dataclass
class Result:
    reply: dict
    outputs: list[dict] = field(default_factory=list)
    first_output_at: float | None = None
    done_at: float | None = None

    @property
    def status(self) -> str:
        return self.reply["content"]["status"]

    def stream(self, name: str | None = None) -> str:
        return "".join(o["content"]["text"] for o in self.outputs
                       if o["msg_type"] == "stream" and (name is None or o["content"]["name"] == name))

    def errors(self) -> list[dict]:
        return [o["content"] for o in self.outputs if o["msg_type"] == "error"]

    def of_type(self, msg_type: str) -> list[dict]:
        return [o["content"] for o in self.outputs if o["msg_type"] == msg_type]

    def text(self) -> str:
        parts = []
        for o in self.outputs:
            c = o["content"]
            if o["msg_type"] == "stream":
                parts.append(c["text"])
            elif o["msg_type"] in ("display_data", "update_display_data", "execute_result"):
                parts.append(c["data"].get("text/plain", ""))
            elif o["msg_type"] == "error":
                parts.append(f"{c['ename']}: {c['evalue']}")
        return "\n".join(parts)


class Kernel:
    def __init__(self, kernel_name: str = "keepbook", **start: Any) -> None:
        self.km, self.kc = start_new_kernel(kernel_name=kernel_name, **start)

    def execute(self, code: str, timeout: float = 120, on_output: Any = None) -> Result:
        msg_id = self.kc.execute(code)
        start = time.monotonic()
        res = Result(reply={})
        idle = False
        while not idle:
            try:
                msg = self.kc.get_iopub_msg(timeout=timeout)
            except queue.Empty:
                raise TimeoutError(f"no output within {timeout} s for: {code[:60]!r}") from None
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            t = msg["msg_type"]
            if t == "status" and msg["content"]["execution_state"] == "idle":
                idle = True
            elif t in ("stream", "display_data", "update_display_data", "execute_result", "error"):
                if res.first_output_at is None:
                    res.first_output_at = time.monotonic() - start
                res.outputs.append(msg)
                if on_output:
                    on_output(msg)
        res.reply = self.kc.get_shell_msg(timeout=timeout)
        while res.reply["parent_header"].get("msg_id") != msg_id:
            res.reply = self.kc.get_shell_msg(timeout=timeout)
        res.done_at = time.monotonic() - start
        return res

    def close(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=False)


def ok(res: Result) -> Result:
    assert res.status == "ok", res.text()
    return res


def plain(res: Result) -> str:
    """The text/plain of the cell's execute_result."""
    return res.of_type("execute_result")[0]["data"]["text/plain"]


def keep_id(kernel: Kernel) -> str:
    """The current Keep's id, as `%keep status` shows it."""
    import re

    res = kernel.execute("%keep status")
    m = re.search(r"^id\s+(\w+)", res.text(), re.M)
    assert m, res.text()
    return m.group(1)
