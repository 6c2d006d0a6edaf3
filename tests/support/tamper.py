"""A hostile keep manager for tests: the same API, relayed to a real keepmgr, with a hook that
may rewrite any answer.  It records every request the client sent, so a test can prove that
nothing (no provisioning, no cell) left the client after a failed attestation."""

from __future__ import annotations

import asyncio
import threading
from typing import Callable

import aiohttp
from aiohttp import web

Hook = Callable[[str, str, bytes, int], tuple[bytes, int]]


class TamperingManager:
    def __init__(self, upstream: str, hook: Hook | None = None,
                 request_hook: Callable[[str, str, bytes], bytes] | None = None):
        self.upstream = upstream.rstrip("/")
        self.hook = hook or (lambda method, path, body, status: (body, status))
        self.request_hook = request_hook or (lambda method, path, body: body)
        self.requests: list[tuple[str, str, bytes]] = []
        self.relayed: list[bytes] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.url = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)

    async def _start(self) -> str:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._relay)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.session = aiohttp.ClientSession()
        port = site._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def _relay(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append((request.method, request.path, body))
        self.relayed.append(body)
        body = self.request_hook(request.method, request.path, body)
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("authorization", "content-type")}
        async with self.session.request(request.method, self.upstream + request.path_qs, data=body,
                                        headers=headers) as resp:
            data, status = await resp.read(), resp.status
        self.relayed.append(data)
        data, status = self.hook(request.method, request.path, data, status)
        return web.Response(body=data, status=status, content_type="application/cbor")

    def paths(self) -> list[str]:
        return [f"{m} {p.rsplit('/', 1)[-1] if p.count('/') > 3 else p}" for m, p, _ in self.requests]

    def close(self) -> None:
        async def stop() -> None:
            await self.session.close()
            await self.runner.cleanup()
        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
