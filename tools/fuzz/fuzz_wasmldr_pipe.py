"""atheris harness: the wasmldr control pipe — frames into a real wasmldr process via its stdin,
as the host's keepldr would send them.

Well-formed frames with wrong content (wrong message types, hostile start configs, attest and
provision out of order, random sealed blobs) go to one long-lived Keep: each must get an answer
(a reply, or an error frame with a 4xx reason) within 5 s.  A frame that does not decode is the
host breaking the protocol: the Keep must answer one error frame and exit cleanly; those are sent
to a fresh Keep, one in every MALFORMED_EVERY (starting a Keep takes ~0.6 s); the others are
decoded in process only (that decoder is the one the Keep uses)."""

from __future__ import annotations

import time

from common import Stats, fuzz, instrument, split_input

with instrument():
    from keepbook.keep.shared import protocol as p
from tests.hostile import mutations as mu
from tests.hostile.pipes import PipeKeep, pipe_message

MALFORMED_EVERY = 100
RSS_LIMIT_KIB = 64 * 1024
stats = Stats("wasmldr control pipe", every=10)
keep = PipeKeep()
malformed_seen = 0


def test_one_input(data: bytes) -> None:
    global keep, malformed_seen
    structured, rng, raw = split_input(data)
    body = pipe_message(rng) if structured else raw
    try:
        p.decode_any(body)
        well_formed = True
    except p.ProtocolError:
        well_formed = False
    started = time.monotonic()
    if well_formed:
        keep.send(body)
        answer = keep.answer(timeout=5.0)
        assert answer is not None, "the Keep closed its control pipe on a well-formed frame"
        if isinstance(answer, p.ErrorBody):
            assert 400 <= answer.status < 500 and answer.reason.strip(), (answer.status, answer.reason)
        else:
            assert isinstance(answer, (p.Reply, p.AttestResponse, p.ProvisionResponse)), answer
        stats.count(not isinstance(answer, p.ErrorBody), time.monotonic() - started)
    else:
        malformed_seen += 1
        if malformed_seen % MALFORMED_EVERY:
            return   # not sent: decoded in process above, by the Keep's own decoder
        victim = PipeKeep()
        victim.send(body)
        answer = victim.answer(timeout=5.0)
        if answer is not None:
            assert isinstance(answer, p.ErrorBody) and 400 <= answer.status < 500 and answer.reason
        assert victim.proc.wait(5) == 0, "the Keep did not exit cleanly"
        victim.close()
        stats.count(False, time.monotonic() - started)
    assert time.monotonic() - started < 6.0
    if stats.data["inputs"] % 200 == 0:
        if keep.proc.poll() is not None:
            raise AssertionError("the long-lived Keep died")
        stats.rss(mu.rss_kib(keep.proc.pid))
        grown = stats.data["rss_kib_now"] - stats.data["rss_kib_start"]
        assert grown < RSS_LIMIT_KIB, f"wasmldr RSS grew by {grown} KiB"


if __name__ == "__main__":
    fuzz(test_one_input, stats)
