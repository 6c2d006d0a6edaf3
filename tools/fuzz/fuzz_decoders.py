"""atheris harness: every CBOR decoder.  Usage: fuzz_decoders.py TARGET [libFuzzer flags]
TARGET: decode_any | from_cbor | frames | sequence.  Property: a Message, or ProtocolError with a
4xx status and a reason; nothing else, and fast."""

from __future__ import annotations

import sys
import time

from common import Stats, fuzz, instrument, split_input

with instrument():
    from keepbook.keep.shared import protocol as p
from tests.hostile import mutations as mu

TARGET = sys.argv.pop(1) if len(sys.argv) > 1 and not sys.argv[1].startswith("-") else "decode_any"
NAMES = sorted(p._REGISTRY)
stats = Stats(f"decoder:{TARGET}")


def _chunks(structured, rng, raw, stream):
    if structured:
        return stream(rng)
    cut = raw[0] % (len(raw) + 1) if raw else 0
    return [raw[:cut], raw[cut:]]


def run(data: bytes) -> bool:
    structured, rng, raw = split_input(data)
    if TARGET == "decode_any":
        p.decode_any(mu.message_bytes(rng) if structured else raw)
    elif TARGET == "from_cbor":
        name = NAMES[data[0] % len(NAMES)] if data else NAMES[0]
        cls = p._REGISTRY[name]
        msg = cls.from_cbor(mu.message_bytes(rng, [name]) if structured else raw)
        enc = msg.to_cbor()
        assert cls.from_cbor(enc).to_cbor() == enc   # (NaN != NaN: compare encodings)
    elif TARGET == "frames":
        dec = p.FrameDecoder()
        for chunk in _chunks(structured, rng, raw, mu.frame_stream):
            dec.feed(chunk)
            list(dec.messages())
    elif TARGET == "sequence":
        dec = p.SequenceDecoder()
        for chunk in _chunks(structured, rng, raw, mu.event_stream):
            dec.feed(chunk)
            list(dec.events())
    else:
        raise SystemExit(f"unknown target {TARGET!r}")
    return True


def test_one_input(data: bytes) -> None:
    started = time.monotonic()
    try:
        ok = run(data)
    except p.ProtocolError as exc:
        assert 400 <= exc.status < 500 and exc.reason.strip(), (exc.status, exc.reason)
        ok = False
    took = time.monotonic() - started
    assert took < 1.0, f"one input took {took:.2f} s"
    stats.count(ok, took)


if __name__ == "__main__":
    fuzz(test_one_input, stats)
