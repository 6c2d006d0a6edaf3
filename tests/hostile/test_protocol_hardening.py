"""Regressions for decoder bugs this suite found (each one a claim in docs/protocol.md)."""

from __future__ import annotations

import os

import pytest

from keepbook.keep.shared import protocol as p

ATTEST = p.AttestRequest(nonce=os.urandom(32)).to_cbor()


@pytest.mark.parametrize("tail", [ATTEST, b"\x00", b"\xff", b"\xf6" * 100],
                         ids=["second message", "one zero byte", "break byte", "nulls"])
def test_trailing_data_after_a_message_is_refused(tail):
    """docs/protocol.md: 'trailing garbage → 400 malformed CBOR'.  cbor2.loads ignores trailing
    bytes, so a host could append a second message that one peer reads and another ignores."""
    with pytest.raises(p.ProtocolError) as exc:
        p.AttestRequest.from_cbor(ATTEST + tail)
    assert exc.value.status == 400 and "trailing data" in exc.value.reason
    with pytest.raises(p.ProtocolError, match="trailing data"):
        p.decode_any(ATTEST + tail)


def test_trailing_data_inside_a_frame_is_refused():
    body = ATTEST + ATTEST
    dec = p.FrameDecoder()
    dec.feed(p.FRAME_HEADER.pack(len(body)) + body)
    with pytest.raises(p.ProtocolError, match="trailing data"):
        list(dec.messages())


@pytest.mark.parametrize("header", [b"\x5b", b"\x7b", b"\x9b", b"\xbb"],
                         ids=["bytes", "text", "array", "map"])
def test_huge_declared_lengths_fail_fast_without_allocating(header):
    with pytest.raises(p.ProtocolError, match="malformed CBOR"):
        p.loads(header + (2**62).to_bytes(8, "big") + b"x")
