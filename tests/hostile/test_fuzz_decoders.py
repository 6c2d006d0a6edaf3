"""Fuzzing every CBOR decoder with structure-aware inputs (tests/hostile/mutations.py):
decode_any, each Message.from_cbor, FrameDecoder, SequenceDecoder.

Property: every input decodes to a valid message or raises ProtocolError with a 4xx status and
a reason — nothing else escapes, and no input takes long.  A few hundred examples per target
here; `make stress` runs ten times as many, `make fuzz` runs atheris for 10^5+."""

from __future__ import annotations

import collections
import random
import time

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from keepbook.keep.shared import protocol as p
from tests.hostile import mutations as mu
from tests.hostile.report import STRESS, record

SCALE = 10 if STRESS else 1
FAST = settings(max_examples=300 * SCALE, deadline=1000, derandomize=not STRESS,
                suppress_health_check=[HealthCheck.too_slow])
PER_MESSAGE = settings(max_examples=40 * SCALE, deadline=1000, derandomize=not STRESS,
                       suppress_health_check=[HealthCheck.too_slow])
PER_INPUT_S = 0.5
COUNTS: collections.Counter = collections.Counter()


@pytest.fixture(scope="module", autouse=True)
def tally():
    yield
    for target, n in COUNTS.items():
        record("inputs", f"decoder {target}", count=n)


def refused_cleanly(target: str, fn) -> None:
    COUNTS[target] += 1
    started = time.monotonic()
    try:
        fn()
    except p.ProtocolError as exc:
        assert 400 <= exc.status < 500 and exc.reason.strip(), (exc.status, exc.reason)
    assert time.monotonic() - started < PER_INPUT_S


@FAST
@given(st.randoms(use_true_random=False))
def test_decode_any(rng: random.Random):
    data = mu.message_bytes(rng)
    refused_cleanly("decode_any", lambda: p.decode_any(data))


@pytest.mark.parametrize("name", sorted(p._REGISTRY))
@PER_MESSAGE
@given(rng=st.randoms(use_true_random=False))
def test_each_message_from_cbor(name: str, rng: random.Random):
    cls = p._REGISTRY[name]
    data = mu.message_bytes(rng, [name])

    def decode() -> None:
        msg = cls.from_cbor(data)
        assert isinstance(msg, cls)
        enc = msg.to_cbor()   # what decodes re-encodes stably (encodings: NaN != NaN)
        assert cls.from_cbor(enc).to_cbor() == enc
    refused_cleanly(f"{name}.from_cbor", decode)


@FAST
@given(st.randoms(use_true_random=False))
def test_frame_decoder(rng: random.Random):
    chunks = mu.frame_stream(rng)

    def feed() -> None:
        dec = p.FrameDecoder()
        for chunk in chunks:
            dec.feed(chunk)
            for msg in dec.messages():
                assert isinstance(msg, p.Message)
        assert dec.pending <= sum(map(len, chunks))
    refused_cleanly("FrameDecoder", feed)


@FAST
@given(st.randoms(use_true_random=False))
def test_sequence_decoder(rng: random.Random):
    chunks = mu.event_stream(rng)

    def feed() -> None:
        dec = p.SequenceDecoder()
        for chunk in chunks:
            dec.feed(chunk)
            for event in dec.events():
                assert isinstance(event, p.Event)
    refused_cleanly("SequenceDecoder", feed)


def test_oversized_frame_is_refused_at_the_header():
    """A 4 GiB frame header is refused before anything is buffered."""
    dec = p.FrameDecoder()
    dec.feed(b"\xff\xff\xff\xff" + b"\0" * 16)
    with pytest.raises(p.ProtocolError) as exc:
        list(dec.messages())
    assert exc.value.status == 413


def test_sequence_decoder_split_at_every_byte():
    """Events split at every possible byte boundary decode the same as in one piece."""
    events = [p.Event(kind="stream", content={"name": "stdout", "text": "é" * i}) for i in range(5)]
    data = b"".join(e.to_cbor() for e in events) + p.Event(kind="status", content={"ok": True}).to_cbor()
    for cut in range(len(data) + 1):
        dec = p.SequenceDecoder()
        got = []
        for piece in (data[:cut], data[cut:]):
            dec.feed(piece)
            got.extend(dec.events())
        assert [e.kind for e in got] == ["stream"] * 5 + ["status"] and dec.pending == 0
