"""A user's side of JupyterHub and of their Jupyter server, over HTTP only: the hub's REST API,
the server's contents and kernels APIs, and a kernel's websocket (Jupyter's JSON messages) —
what a browser does, without a browser.  For tests."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
import urllib.error
import urllib.request
import uuid
from typing import Any

import aiohttp
import nbformat


def rest(method: str, url: str, token: str, body: Any = None, timeout: float = 30) -> tuple[int, Any]:
    """JSON over HTTP with ``Authorization: token …``; (status, decoded body or text)."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Authorization": f"token {token}",
                                          **({"Content-Type": "application/json"} if data else {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode(errors="replace")


class Hub:
    """The hub's REST API with an admin token."""

    def __init__(self, url: str, token: str):
        self.url, self.token = url.rstrip("/"), token

    def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        return rest(method, f"{self.url}/hub/api{path}", self.token, body)

    def start_server(self, name: str) -> None:
        status, body = self.api("POST", f"/users/{name}/server")
        if status not in (201, 202):   # started, or starting
            raise RuntimeError(f"the hub did not start {name}'s server: {status} {body}")

    def wait_ready(self, name: str, timeout: float) -> str:
        """The server's URL path once the hub says it is ready."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, body = self.api("GET", f"/users/{name}")
            server = (body or {}).get("servers", {}).get("") if status == 200 else None
            if server and server.get("ready"):
                return server["url"]
            time.sleep(0.5)
        raise TimeoutError(f"{name}'s server was not ready within {timeout:.0f} s")

    def user_token(self, name: str) -> str:
        """A token of ``name``'s own, allowed to use their server (as their browser would)."""
        status, body = self.api("POST", f"/users/{name}/tokens",
                                {"note": "test", "expires_in": 3600,
                                 "scopes": [f"access:servers!user={name}"]})
        if status not in (200, 201):
            raise RuntimeError(f"no token for {name}: {status} {body}")
        return body["token"]


class JupyterUser:
    """One user's Jupyter server behind the hub's proxy."""

    def __init__(self, hub_url: str, server_path: str, name: str, token: str):
        self.base = hub_url.rstrip("/") + server_path.rstrip("/")
        self.name, self.token = name, token

    def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        return rest(method, f"{self.base}/api{path}", self.token, body)

    def put_notebook(self, path: str, nb: nbformat.NotebookNode) -> None:
        status, body = self.api("PUT", f"/contents/{path}",
                                {"type": "notebook", "format": "json", "content": nb})
        if status not in (200, 201):
            raise RuntimeError(f"cannot save {path} for {self.name}: {status} {body}")

    def get_notebook(self, path: str) -> nbformat.NotebookNode:
        status, body = self.api("GET", f"/contents/{path}?content=1&type=notebook")
        if status != 200:
            raise RuntimeError(f"cannot read {path} of {self.name}: {status} {body}")
        return nbformat.from_dict(body["content"])

    def start_kernel(self, kernel_name: str) -> str:
        status, body = self.api("POST", "/kernels", {"name": kernel_name})
        if status != 201:
            raise RuntimeError(f"cannot start a {kernel_name} kernel for {self.name}: {status} {body}")
        return body["id"]

    async def run_cells(self, kernel_id: str, cells: list[str], timeout: float) -> list[list[dict]]:
        """Execute each cell in the kernel over its websocket; every cell's outputs (nbformat
        dicts), in order.  An error in one cell does not stop the next."""
        ws_url = self.base.replace("http://", "ws://", 1) + f"/api/kernels/{kernel_id}/channels"
        session = uuid.uuid4().hex
        out: list[list[dict]] = []
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(ws_url, headers={"Authorization": f"token {self.token}"},
                                       max_msg_size=64 * 1024 * 1024, heartbeat=30) as ws:
                for code in cells:
                    out.append(await asyncio.wait_for(self._execute(ws, session, code), timeout))
        return out

    async def _execute(self, ws: aiohttp.ClientWebSocketResponse, session: str, code: str) -> list[dict]:
        msg_id = uuid.uuid4().hex
        await ws.send_json({
            "header": {"msg_id": msg_id, "username": self.name, "session": session,
                       "msg_type": "execute_request", "version": "5.3",
                       "date": dt.datetime.now(dt.timezone.utc).isoformat()},
            "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
            "content": {"code": code, "silent": False, "store_history": True,
                        "user_expressions": {}, "allow_stdin": False, "stop_on_error": False}})
        outputs: list[dict] = []
        replied = idle = False
        while not (replied and idle):
            msg = await ws.receive()
            if msg.type != aiohttp.WSMsgType.TEXT:
                if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                    raise ConnectionError(f"{self.name}'s kernel websocket closed")
                continue
            m = json.loads(msg.data)
            if m.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind = m["header"]["msg_type"]
            if m["channel"] == "iopub" and kind in ("stream", "display_data", "execute_result", "error"):
                outputs.append(dict(nbformat.v4.output_from_msg(m)))
            elif m["channel"] == "iopub" and kind == "status":
                idle = m["content"]["execution_state"] == "idle"
            elif m["channel"] == "shell" and kind == "execute_reply":
                replied = True
        return outputs


def output_text(outputs: list[dict]) -> str:
    """Everything a cell showed, as text (streams, text/plain, errors)."""
    parts = []
    for o in outputs:
        if o.get("output_type") == "stream":
            parts.append(o.get("text", ""))
        elif o.get("output_type") == "error":
            parts.append(f"{o.get('ename')}: {o.get('evalue')}")
        else:
            parts.append(str(o.get("data", {}).get("text/plain", "")))
    return "\n".join(parts)
