"""Async helpers to read and write protocol frames on pipes (host side and Keep side share it)."""

from __future__ import annotations

import asyncio

from keepbook.keep.shared import protocol


async def read_frame(reader: asyncio.StreamReader, max_frame: int = protocol.MAX_MESSAGE_BYTES
                     ) -> protocol.Message | None:
    """Read one framed message; None at a clean end of stream."""
    try:
        header = await reader.readexactly(protocol.FRAME_HEADER.size)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise protocol.ProtocolError("pipe closed in the middle of a frame header") from None
        return None
    (length,) = protocol.FRAME_HEADER.unpack(header)
    if length > max_frame:
        raise protocol.ProtocolError(f"frame of {length} bytes exceeds the limit of {max_frame}", 413)
    try:
        body = await reader.readexactly(length)
    except asyncio.IncompleteReadError:
        raise protocol.ProtocolError("pipe closed in the middle of a frame") from None
    return protocol.decode_any(body)


def write_frame(writer: asyncio.StreamWriter, message: protocol.Message) -> None:
    writer.write(protocol.encode_frame(message))
