"""Protocol frames over asyncio pipes: the host's side (keepmgr, keepldr) and the Keep's side
(wasmldr) read and write them the same way.  An adapter only: the bytes come from the caller's
streams and go through the one frame decoder, :class:`~keepbook.keep.shared.protocol.FrameDecoder`;
it opens nothing and holds no key."""

from __future__ import annotations

import asyncio

from keepbook.keep.shared import protocol

READ_SIZE = 1 << 16


class FrameReader:
    """Whole messages from one pipe, one at a time."""

    def __init__(self, stream: asyncio.StreamReader, max_frame: int = protocol.MAX_MESSAGE_BYTES):
        self._stream = stream
        self._decoder = protocol.FrameDecoder(max_frame)
        self._ready: list[bytes] = []

    async def read(self) -> protocol.Message | None:
        """The next message; None at a clean end of stream; RemoteProtocolError for a bad frame
        (the frames after it stay readable) or a cut one (an oversized frame is refused at its
        header, and the stream cannot be trusted after it)."""
        while not self._ready:
            chunk = await self._stream.read(READ_SIZE)
            if not chunk:
                self._decoder.end()
                return None
            self._decoder.feed(chunk)
            self._ready.extend(self._decoder.bodies())
        return protocol.decode_any(self._ready.pop(0))


def write_frame(writer: asyncio.StreamWriter, message: protocol.Message) -> None:
    writer.write(protocol.encode_frame(message))
