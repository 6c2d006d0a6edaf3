"""CBOR over aiohttp, the same way on both servers (keepmgr on the host, wasmldr in the Keep):
read a request body as one protocol message, answer with one, and turn every failure into a
4xx/5xx CBOR ``error`` with a reason — never a traceback, never a bare text body.  Holds no
keys and sees only what its caller hands it."""

from __future__ import annotations

from typing import Any, Awaitable, Callable

from aiohttp import web

from keepbook.keep.shared import protocol
from keepbook.keep.shared.connection_guard import read_body

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def cbor_response(msg: protocol.Message, status: int = 200) -> web.Response:
    return web.Response(body=msg.to_cbor(), status=status, content_type=protocol.CBOR)


def error_response(status: int, reason: str) -> web.Response:
    return cbor_response(protocol.ErrorBody.of(status, reason), status)


async def read_message(request: web.Request, cls: type[protocol.Message]) -> Any:
    """The request body as a ``cls`` message, or a ProtocolError (415 wrong type, 4xx bad body,
    413 too large, 408 a body that stops arriving)."""
    ctype = request.headers.get("Content-Type", "").split(";")[0].strip()
    if ctype != protocol.CBOR:
        raise protocol.ProtocolError(f"wrong content type {protocol.cut(ctype, 80) or '(none)'!r}: "
                                     f"send {protocol.CBOR}", 415)
    return cls.from_cbor(await read_body(request, cls.MAX_BYTES if cls.MSG else protocol.MAX_MESSAGE_BYTES))


def error_middleware(body_limit: int, internal: Callable[[Exception], str]) -> Any:
    """``internal(exc)`` returns the 500 reason (and may log the exception's *type*)."""

    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except protocol.ProtocolError as exc:
            return error_response(exc.status, exc.reason)
        except web.HTTPRequestEntityTooLarge:
            return error_response(413, f"request body exceeds the limit of {body_limit} bytes")
        except web.HTTPException as exc:
            if exc.status >= 400:
                return error_response(exc.status, exc.reason or "request refused")
            raise
        except Exception as exc:  # never crash the server; say what happened
            return error_response(500, internal(exc))
    return errors
