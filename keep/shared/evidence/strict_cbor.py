"""Strict CBOR for evidence (Arm CCA tokens, COSE): the protocol's decoding rules — no duplicate
keys, bounded nesting and size, strict UTF-8, no trailing bytes, cbor2's semantic tags refused —
except that evidence formats need integer map keys and a few tags, which the caller names."""

from __future__ import annotations

import io
from typing import Any, Iterable, Mapping

import cbor2

from ..protocol import _SEMANTIC_REFUSALS, MAX_DEPTH, MAX_ITEMS, ProtocolError
from .trust import EvidenceError

MAX_EVIDENCE = 64 * 1024


def loads(data: bytes, *, tags: Iterable[int] = (), what: str = "CBOR") -> Any:
    """One CBOR item; semantic tags other than ``tags`` are refused.  EvidenceError names why."""
    data = bytes(data)
    if not data:
        raise EvidenceError(f"{what} is empty")
    if len(data) > MAX_EVIDENCE:
        raise EvidenceError(f"{what} is oversized: {len(data)} bytes (limit {MAX_EVIDENCE})")
    allowed = frozenset(tags)

    def tag_hook(*args: Any) -> Any:   # cbor2's C and Python decoders pass different arguments
        tag = next(a for a in args if isinstance(a, cbor2.CBORTag))
        if tag.tag not in allowed:
            raise ProtocolError(f"CBOR tag {tag.tag} is not expected here")
        return tag

    stream = io.BytesIO(data)
    try:
        value = cbor2.CBORDecoder(stream, tag_hook=tag_hook, semantic_decoders=_SEMANTIC_REFUSALS,
                                  max_depth=MAX_DEPTH + 1, allow_duplicate_keys=False,
                                  str_errors="strict").decode()
    except ProtocolError as exc:
        raise EvidenceError(f"{what}: {exc.reason}") from None
    except RecursionError:
        raise EvidenceError(f"{what} nests too deeply") from None
    except Exception as exc:  # cbor2 raises several types: all mean malformed input
        cause = exc.__cause__ if isinstance(exc.__cause__, ProtocolError) else None
        raise EvidenceError(f"{what} is not valid CBOR: {cause.reason if cause else exc}") from None
    if stream.tell() != len(data):
        raise EvidenceError(f"{what}: {len(data) - stream.tell()} bytes of trailing data")
    _check(value, what, 0)
    return value


def _check(value: Any, what: str, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise EvidenceError(f"{what} nests too deeply")
    if isinstance(value, cbor2.CBORTag):
        _check(value.value, what, depth + 1)
    elif isinstance(value, (list, tuple)):
        if len(value) > MAX_ITEMS:
            raise EvidenceError(f"{what}: an array of {len(value)} items is too long")
        for item in value:
            _check(item, what, depth + 1)
    elif isinstance(value, Mapping):
        if len(value) > MAX_ITEMS:
            raise EvidenceError(f"{what}: a map of {len(value)} entries is too long")
        for k, item in value.items():
            if isinstance(k, bool) or not isinstance(k, (int, str)):
                raise EvidenceError(f"{what}: map key {k!r} is neither an integer nor text")
            _check(item, what, depth + 1)
    elif not isinstance(value, (int, bytes, str, bool, float, type(None))):
        raise EvidenceError(f"{what}: CBOR value of type {type(value).__name__} is not allowed")
