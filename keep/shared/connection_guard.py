"""Slowloris protection for keepbook's two HTTP servers — the keep manager (host) and the Keep's
attested listener (inside) — in one place.  Holds no keys.

A connection is *pending* until it is admitted: on the keep manager when a request with a valid
bearer token arrives (:meth:`ConnectionGuard.admit`, called by its auth middleware), on the
Keep when the TLS handshake that requires the sealed client certificate completes.  Pending
connections are bounded in number and in time:

* a pending connection that is not admitted within ``header_s`` of connecting is closed
  (a TLS handshake must finish in that time, too);
* at most ``max_pending`` connections are pending at once: one more closes the oldest — so a
  flood of half-open connections without a token cannot use up the server's descriptors, while a
  client that sends its request at once is admitted before it can be pushed out.

Bodies are read with a limit on silence (:func:`read_body`), so a slow body is refused too.

TLS, when given, is started here on the accepted TCP connection (``loop.start_tls``), so a
connection is counted from its first byte, not only once a handshake completed."""

from __future__ import annotations

import asyncio
import ssl
from collections import OrderedDict
from typing import Any, Callable

from aiohttp import web

from keepbook.keep.shared import protocol

HEADER_S = 10.0
BODY_IDLE_S = 10.0
MAX_PENDING = 64
#: an app may set its own limit on body silence (the keep manager's ``--body-timeout``)
BODY_IDLE = web.AppKey("body_idle_s", float)


class _Guarded(asyncio.Protocol):
    """One accepted connection: counted while pending, then handed to aiohttp's handler (every
    protocol call passes through to it)."""

    def __init__(self, guard: "ConnectionGuard"):
        self.guard = guard
        self.inner: Any = None
        self.transport: Any = None
        self.timer: asyncio.TimerHandle | None = None
        self.early: list[bytes] = []  # data TLS delivered before start_tls returned
        self.early_eof = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.guard._pending_add(self)
        self.timer = self.guard.loop.call_later(self.guard.header_s, self.expire)
        if self.guard.ssl is None:
            self._serve(transport)
        else:
            transport.pause_reading()
            self.guard.loop.create_task(self._start_tls(transport))

    async def _start_tls(self, raw: Any) -> None:
        try:
            tls = await self.guard.loop.start_tls(raw, self, self.guard.ssl, server_side=True,
                                                  ssl_handshake_timeout=self.guard.header_s)
        except (OSError, ssl.SSLError, asyncio.TimeoutError, ConnectionError, RuntimeError):
            raw.abort()  # no handshake in time, or not with the sealed client certificate
            self.connection_lost(None)
            return
        if tls is None:
            return
        self.transport = tls
        self.guard.admit(tls)  # the handshake required the client certificate: authenticated
        self._serve(tls)

    def _serve(self, transport: Any) -> None:
        self.inner = self.guard.factory()
        self.guard._by_transport[id(transport)] = self
        self.inner.connection_made(transport)
        for data in self.early:
            self.inner.data_received(data)
        self.early.clear()
        if self.early_eof:
            self.inner.eof_received()

    def expire(self) -> None:
        if self.guard._pending.pop(id(self), None) is not None and self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.data_received(data)
        elif sum(map(len, self.early)) < 1 << 20:  # the request that came with the handshake
            self.early.append(data)
        elif self.transport is not None:
            self.transport.abort()

    def eof_received(self) -> bool | None:
        if self.inner is None:
            self.early_eof = True
            return True
        return self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.guard._forget(self)
        if self.timer is not None:
            self.timer.cancel()
        if self.inner is not None:
            self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()


class ConnectionGuard:
    """The accept side of one server: ``loop.create_server(guard.protocol, host, port)``."""

    def __init__(self, factory: Callable[[], Any], *, ssl_context: ssl.SSLContext | None = None,
                 header_s: float = HEADER_S, max_pending: int = MAX_PENDING):
        self.factory = factory
        self.ssl = ssl_context
        self.header_s = header_s
        self.max_pending = max_pending
        self.loop = asyncio.get_running_loop()
        self._pending: OrderedDict[int, _Guarded] = OrderedDict()
        self._by_transport: dict[int, _Guarded] = {}
        self.evicted = 0

    def protocol(self) -> _Guarded:
        return _Guarded(self)

    def _pending_add(self, conn: _Guarded) -> None:
        self._pending[id(conn)] = conn
        while len(self._pending) > self.max_pending:
            _, oldest = self._pending.popitem(last=False)
            self.evicted += 1
            if oldest.transport is not None:
                oldest.transport.abort()

    def admit(self, transport: Any) -> None:
        """This connection is authenticated: no longer pending (no header deadline, no cap)."""
        conn = self._by_transport.get(id(transport))
        if conn is None:  # the TLS case admits before the handler is attached
            conn = next((c for c in self._pending.values() if c.transport is transport), None)
        if conn is not None:
            self._pending.pop(id(conn), None)
            if conn.timer is not None:
                conn.timer.cancel()

    def _forget(self, conn: _Guarded) -> None:
        self._pending.pop(id(conn), None)
        if conn.transport is not None:
            self._by_transport.pop(id(conn.transport), None)

    @property
    def pending(self) -> int:
        return len(self._pending)


async def serve(runner: web.AppRunner, host: str, port: int, *,
                ssl_context: ssl.SSLContext | None = None, header_s: float = HEADER_S,
                max_pending: int = MAX_PENDING) -> tuple[asyncio.AbstractServer, ConnectionGuard, int]:
    """Listen for ``runner``'s app behind a :class:`ConnectionGuard`: (server, guard, port)."""
    assert runner.server is not None, "runner.setup() first"
    guard = ConnectionGuard(runner.server, ssl_context=ssl_context, header_s=header_s,
                            max_pending=max_pending)
    server = await guard.loop.create_server(guard.protocol, host, port)
    return server, guard, server.sockets[0].getsockname()[1]


def _idle_s(request: web.Request) -> float:
    return request.config_dict.get(BODY_IDLE, BODY_IDLE_S)


async def read_body(request: web.Request, limit: int) -> bytes:
    """The whole body, read as it comes: 413 past ``limit`` bytes, 408 after the app's limit on
    silence without a byte (a slow body ties up the server as slow headers do)."""
    idle_s = _idle_s(request)
    if request.content_length is not None and request.content_length > limit:
        raise protocol.ProtocolError(f"request body of {request.content_length} bytes exceeds "
                                     f"the limit of {limit} bytes", 413)
    parts, size = [], 0
    while True:
        try:
            piece = await asyncio.wait_for(request.content.readany(), idle_s)
        except asyncio.TimeoutError:
            raise protocol.ProtocolError(f"request body: no data for {idle_s:g} s", 408) from None
        if not piece:
            return b"".join(parts)
        size += len(piece)
        if size > limit:
            raise protocol.ProtocolError(f"request body exceeds the limit of {limit} bytes", 413)
        parts.append(piece)


async def read_piece(request: web.Request) -> bytes:
    """The next piece of a streamed body (b"" at its end), or 408 after the limit on silence."""
    idle_s = _idle_s(request)
    try:
        return await asyncio.wait_for(request.content.readany(), idle_s)
    except asyncio.TimeoutError:
        raise protocol.ProtocolError(f"request body: no data for {idle_s:g} s", 408) from None
