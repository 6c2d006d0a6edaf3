"""A TCP proxy the hostile network controls: it relays bytes to a target, records everything it
sees (to prove what the host can read), and can cut a connection in the middle of a stream."""

from __future__ import annotations

import asyncio
import threading


class CuttingProxy:
    """Relays 127.0.0.1:<port> → target.  ``cut_after``: close both sockets of a connection once
    that many server→client bytes have passed (None: never).  ``cut`` may change at any time."""

    def __init__(self, target_host: str, target_port: int, cut_after: int | None = None):
        self.target = (target_host, target_port)
        self.cut_after = cut_after
        self.seen = bytearray()           # every byte in both directions
        self.cuts = 0
        self.connections = 0
        self._transports: list[asyncio.BaseTransport] = []
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.port = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)

    async def _start(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self._server.sockets[0].getsockname()[1]

    async def _handle(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            s_reader, s_writer = await asyncio.open_connection(*self.target)
        except OSError:
            c_writer.close()
            return
        down = 0
        self._transports += [c_writer.transport, s_writer.transport]

        async def pipe(reader, writer, to_client: bool) -> None:
            nonlocal down
            try:
                while data := await reader.read(4096):
                    self.seen += data
                    if to_client:
                        down += len(data)
                        if self.cut_after is not None and down > self.cut_after:
                            self.cuts += 1
                            raise ConnectionAbortedError("cut")
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                for w in (c_writer, s_writer):
                    w.transport.abort()

        await asyncio.gather(pipe(c_reader, s_writer, False), pipe(s_reader, c_writer, True))

    def close(self) -> None:
        async def stop() -> None:
            self._server.close()
            for t in self._transports:
                t.abort()
            await asyncio.sleep(0.05)
        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
