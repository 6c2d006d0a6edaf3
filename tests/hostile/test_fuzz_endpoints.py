"""Fuzzing every endpoint that takes input from an untrusted side:

* the keep manager's HTTP API (a real keepmgr process) — from any network client;
* the wasmldr control pipe (a real wasmldr process, frames on its stdin) — from the host;
* the wasmldr's attested HTTPS endpoints (a real provisioned Keep, with the right client
  certificate) — from a client that is buggy or compromised.

Property: a success or a 4xx with a reason (or a protocol error frame) for every input; the
server never crashes, answers every request within a bounded time, and its memory does not
grow without bound (RSS measured before and after)."""

from __future__ import annotations

import collections
import http.client as httpc
import random
import time

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from keepbook.keep.shared import protocol as p
from tests.hostile import mutations as mu
from tests.hostile.pipes import PipeKeep, pipe_message
from tests.hostile.report import STRESS, record
from tests.support.http import http
from tests.support.procs import keep_pids

SCALE = 10 if STRESS else 1
PER_REQUEST_S = 5.0
RSS_GROWTH_KIB = 32 * 1024
COUNTS: collections.Counter = collections.Counter()


def fuzz_settings(n: int) -> settings:
    return settings(max_examples=n * SCALE, deadline=None, derandomize=not STRESS,
                    suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module", autouse=True)
def tally():
    yield
    for target, n in COUNTS.items():
        record("inputs", target, count=n)


# ---------------------------------------------------------------- keepmgr


@pytest.fixture(scope="module")
def target_keep(mgr):
    status, body = http("POST", mgr.url + "/v1/keeps", p.CreateKeep(backend="nil").to_cbor(), token=mgr.token)
    assert status == 201
    return p.KeepInfo.from_cbor(body).id


NOT_OFFERED = {**mu.template("create_keep"), "backend": "not-offered"}


def keepmgr_request(rng: random.Random, kid: str) -> tuple[str, str, str, bytes]:
    paths = [("GET", "/v1/health", []), ("GET", "/v1/contracts", []), ("GET", "/v1/keeps", []),
             ("GET", f"/v1/keeps/{kid}", []), ("GET", "/v1/keeps/" + "f" * 16, []),
             ("DELETE", "/v1/keeps/" + "0" * 16, []), ("POST", "/v1/keeps", ["create_keep"]),
             ("POST", f"/v1/keeps/{kid}/attest", ["attest"]),
             ("POST", f"/v1/keeps/{kid}/provision", ["provision"])]
    method, path, ctype, body = mu.http_request(rng, paths)
    if path == "/v1/keeps" and method == "POST" and rng.random() < 0.9:
        body = mu.mutate(rng, NOT_OFFERED)     # mostly: no real Keep started per input
    return method, path, ctype, body


def test_keepmgr_endpoints(mgr, target_keep):
    pid = mgr.proc.pid
    created: list[str] = []

    @fuzz_settings(300)
    @given(st.randoms(use_true_random=False), st.sampled_from(["right", "right", "right", "none", "wrong"]))
    def one(rng: random.Random, who: str):
        method, path, ctype, body = keepmgr_request(rng, target_keep)
        token = {"right": mgr.token, "none": None, "wrong": mgr.token[::-1]}[who]
        started = time.monotonic()
        status, answer = http(method, mgr.url + path, body if method in ("POST", "PUT", "PATCH") else None,
                              token=token, content_type=ctype or None, timeout=PER_REQUEST_S * 2)
        assert time.monotonic() - started < PER_REQUEST_S, (method, path)
        COUNTS["keepmgr HTTP"] += 1
        if status == 201:
            created.append(p.KeepInfo.from_cbor(answer).id)
        if who != "right" and path not in ("/v1/health", "/v1/keeps/../health"):
            assert status in (401, 404, 405), (status, method, path)   # 404/405: no route at all
        mu.assert_clean_refusal(status, answer, request=(method, path, ctype or "", body),
                                target="keepmgr")

    for _ in range(20):   # warm up before measuring memory
        http("GET", mgr.url + "/v1/contracts", token=mgr.token)
    before = mu.rss_kib(pid)
    one()
    after = mu.rss_kib(pid)
    for kid in created:
        http("DELETE", f"{mgr.url}/v1/keeps/{kid}", token=mgr.token)
    record("leak", "keepmgr RSS growth under fuzz", ok=after - before < RSS_GROWTH_KIB,
           kib=after - before)
    assert mgr.proc.poll() is None, "keepmgr crashed"
    assert after - before < RSS_GROWTH_KIB, (before, after)
    assert http("GET", mgr.url + "/v1/health")[0] == 200


# ---------------------------------------------------------------- wasmldr control pipe


def _answer_is_clean(msg: p.Message | None) -> None:
    assert msg is not None, "the Keep closed its control pipe on a well-formed frame"
    if isinstance(msg, p.ErrorBody):
        assert 400 <= msg.status < 500 and msg.reason.strip(), (msg.status, msg.reason)
    else:
        assert isinstance(msg, (p.Reply, p.AttestResponse, p.ProvisionResponse)), msg


def test_wasmldr_control_pipe_well_formed_frames():
    keep = PipeKeep()
    try:
        before = None

        @fuzz_settings(200)
        @given(st.randoms(use_true_random=False))
        def one(rng: random.Random):
            nonlocal before
            keep.send(pipe_message(rng))
            _answer_is_clean(keep.answer(timeout=PER_REQUEST_S))
            COUNTS["wasmldr control pipe (well-formed)"] += 1
            if before is None:
                before = mu.rss_kib(keep.proc.pid)
        one()
        after = mu.rss_kib(keep.proc.pid)
        record("leak", "wasmldr RSS growth under pipe fuzz", ok=after - before < RSS_GROWTH_KIB,
               kib=after - before)
        assert keep.proc.poll() is None
        assert after - before < RSS_GROWTH_KIB, (before, after)
    finally:
        keep.close()


@pytest.mark.parametrize("seed", range(20 if STRESS else 4))
def test_wasmldr_control_pipe_malformed_frame_ends_the_keep_cleanly(seed):
    """A frame that does not decode means keepldr (the host) broke the protocol: the Keep
    answers one error frame with the reason and ends — it does not hang or crash."""
    rng = random.Random(seed)
    keep = PipeKeep()
    try:
        while True:
            body = mu.message_bytes(rng)
            try:
                p.decode_any(body)
            except p.ProtocolError:
                break
        if seed % 2:
            keep.send(body)
        else:   # a header that lies about the length, then the end of the pipe
            keep.send_raw(rng.choice([b"\xff\xff\xff\xff", b"\x00\x00\x10\x00" + body, b"\x00\x00"]))
            keep.proc.stdin.close()  # type: ignore[union-attr]
        COUNTS["wasmldr control pipe (malformed)"] += 1
        answer = keep.answer(timeout=PER_REQUEST_S)
        if answer is not None:
            assert isinstance(answer, p.ErrorBody) and 400 <= answer.status < 500 and answer.reason
        assert keep.proc.wait(PER_REQUEST_S) == 0
    finally:
        keep.close()


# ---------------------------------------------------------------- wasmldr HTTPS (attested channel)


@pytest.fixture(scope="module")
def channel(nil_channel):
    return nil_channel


HTTPS_PATHS = [("POST", "/v1/run", ["run"]), ("POST", "/v1/request", ["request"]),
               ("POST", "/v1/audit", ["audit_request"]), ("POST", "/v1/upload?name=d", [])]


def test_wasmldr_https_endpoints(channel):
    agent, ch = channel
    host, port = ch.endpoint.host, str(ch.endpoint.port)
    _, wasmldr = keep_pids(agent.current.id)
    conn = [httpc.HTTPSConnection(host, int(port), context=ch.context, timeout=PER_REQUEST_S * 2)]

    def post(method: str, path: str, ctype: str, body: bytes) -> tuple[int, bytes]:
        for attempt in range(2):
            try:
                headers = {"Content-Type": ctype} if ctype else {}
                conn[0].request(method, path, body=body, headers=headers)
                resp = conn[0].getresponse()
                return resp.status, resp.read()
            except (httpc.HTTPException, ConnectionError):
                conn[0].close()   # the server may close a connection after an error: reconnect
                conn[0] = httpc.HTTPSConnection(host, int(port), context=ch.context,
                                                      timeout=PER_REQUEST_S * 2)
        raise AssertionError("the Keep's endpoint stopped answering")

    @fuzz_settings(200)
    @given(st.randoms(use_true_random=False))
    def one(rng: random.Random):
        method, path, ctype, body = mu.http_request(rng, HTTPS_PATHS)
        if path.startswith("/v1/upload") and rng.random() < 0.7:
            ctype = "application/octet-stream"
        started = time.monotonic()
        status, answer = post(method, path, ctype, body)
        assert time.monotonic() - started < PER_REQUEST_S, (method, path)
        COUNTS["wasmldr HTTPS"] += 1
        if status == 200 and path == "/v1/run":
            dec = p.SequenceDecoder()
            dec.feed(answer)
            events = list(dec.events())
            assert events and events[-1].kind == "status" and dec.pending == 0
            return
        mu.assert_clean_refusal(status, answer, allow=(200,), request=(method, path, ctype, body),
                                target="wasmldr-https")

    post("POST", "/v1/request", p.CBOR, p.Request(op="status").to_cbor())
    before = mu.rss_kib(wasmldr)
    one()
    after = mu.rss_kib(wasmldr)
    record("leak", "wasmldr RSS growth under HTTPS fuzz", ok=after - before < RSS_GROWTH_KIB,
           kib=after - before)
    assert after - before < RSS_GROWTH_KIB, (before, after)
    # the Keep still runs the user's cells
    events: list = []
    agent.call(agent.run("wasm", events.append, module=mu.HELLO_WASM))


# ---------------------------------------------------------------- regressions the fuzzer found


def test_the_500_the_fuzzer_found_is_a_400_naming_the_field(channel, mgr):
    """issue 12, item 11: `POST /v1/run` with a 65,537-character ``kind`` answered 500 "Server got
    itself in trouble".  Every field's size is checked before its value is used or quoted."""
    from tests.hostile.test_protocol_hardening import HUGE_KIND

    agent, ch = channel
    conn = httpc.HTTPSConnection(ch.endpoint.host, ch.endpoint.port, context=ch.context, timeout=10)
    conn.request("POST", "/v1/run", body=p.dumps(HUGE_KIND), headers={"Content-Type": p.CBOR})
    resp = conn.getresponse()
    status, body = resp.status, resp.read()
    conn.close()
    assert status == 400, (status, body[:200])
    assert p.ErrorBody.from_cbor(body).reason.startswith("run.kind: a value 65537 long is not one of")
    # the same on the keep manager (a choices field of its own)
    huge = {**mu.template("create_keep"), "profile": "p" * 65537}
    status, body = http("POST", mgr.url + "/v1/keeps", p.dumps(huge), token=mgr.token)
    assert status == 400 and p.ErrorBody.from_cbor(body).reason.startswith("create_keep.profile:")
    record("attack", "oversized choice field (the fuzzer's 500)")
