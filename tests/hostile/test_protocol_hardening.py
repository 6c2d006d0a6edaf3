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


# The input `make stress`'s fuzzer found (issue 12, item 11): a 65,537-character `kind` made the
# Keep answer 500 — the choices check quoted it whole, and the error body broke its own limit.
HUGE_KIND = {"v": 1, "msg": "run", "cell_id": "c1", "kind": "k" * 65537, "code": "1"}


@pytest.mark.parametrize("raw, field", [
    (HUGE_KIND, "run.kind"),
    ({**HUGE_KIND, "kind": "python", "cell_id": "c" * 65537}, "run.cell_id"),
    ({"v": 1, "msg": "m" * 70000}, "expected message 'run'"),
    ({"v": "v" * 70000, "msg": "run"}, "unsupported protocol version"),
    ({**HUGE_KIND, "kind": "python", "x" * 70000: 1}, "run: unknown field(s)"),
], ids=["kind", "cell_id", "msg", "version", "field name"])
def test_oversized_values_are_refused_with_a_short_reason(raw, field):
    with pytest.raises(p.ProtocolError) as exc:
        p.RunRequest.from_cbor(p.dumps(raw))
    assert exc.value.status == 400 and exc.value.reason.startswith(field)
    assert len(exc.value.reason) < 400  # the reason never grows with what the peer sent
    p.ErrorBody.of(exc.value.status, exc.value.reason).to_cbor()  # and it can be answered


def test_an_error_body_is_always_answerable():
    body = p.ErrorBody.of(400, "x" * (p.MAX_TEXT * 2))
    assert len(p.ErrorBody.from_cbor(body.to_cbor()).reason) <= p.MAX_TEXT
