"""A keep manager that lies in ways tests/support/tamper.py cannot: it also drops connections
without answering and can send a request to the real manager more than once."""

from __future__ import annotations

from typing import Callable

import aiohttp
from aiohttp import web

from tests.support.tamper import TamperingManager


class HostileManager(TamperingManager):
    """``drop(method, path)`` → True: close the client's connection without any answer.
    ``repeat(method, path)`` → n: send the client's request upstream n extra times first (the
    Keep sees it more than once; the client gets the *first* answer)."""

    def __init__(self, upstream: str, hook=None, request_hook=None, *,
                 drop: Callable[[str, str], bool] | None = None,
                 repeat: Callable[[str, str], int] | None = None):
        self.drop = drop or (lambda method, path: False)
        self.repeat = repeat or (lambda method, path: 0)
        super().__init__(upstream, hook, request_hook)

    async def _relay(self, request: web.Request) -> web.StreamResponse:
        if self.drop(request.method, request.path):
            body = await request.read()
            self.requests.append((request.method, request.path, body))
            self.relayed.append(body)
            assert request.transport is not None
            request.transport.abort()          # no status line, no body: the answer is dropped
            raise ConnectionResetError("dropped by the hostile manager")
        extra = self.repeat(request.method, request.path)
        if extra:
            first = await self._upstream(request, await request.read())
            for _ in range(extra):
                await self._upstream(request, await request.read())
            self.requests.append((request.method, request.path, await request.read()))
            data, status = self.hook(request.method, request.path, *first)
            return web.Response(body=data, status=status, content_type="application/cbor")
        return await super()._relay(request)

    async def _upstream(self, request: web.Request, body: bytes) -> tuple[bytes, int]:
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() in ("authorization", "content-type")}
        if getattr(self, "_own_session", None) is None:   # ours: the base class's is private
            self._own_session = aiohttp.ClientSession()
        async with self._own_session.request(request.method, self.upstream + request.path_qs,
                                        data=body, headers=headers) as resp:
            data = await resp.read()
            self.relayed.append(data)
            return data, resp.status

    def close(self) -> None:
        own = getattr(self, "_own_session", None)
        if own is not None:
            import asyncio
            asyncio.run_coroutine_threadsafe(own.close(), self.loop).result(10)
        super().close()
