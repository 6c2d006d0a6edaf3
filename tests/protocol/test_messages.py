"""The sans-IO protocol module: round trips, and a clear rejection for every malformed shape."""

from __future__ import annotations

import re

import cbor2
import pytest
from hypothesis import given, settings, strategies as st

from keepbook.keep.shared import protocol as p

NONCE = bytes(range(32))


def samples() -> list[p.Message]:
    cfg = p.KeepConfig(keep_id="test-keep", backend="sim-snp", profile="staging", limits=dict(p.DEFAULT_LIMITS),
                       policy=b"", runtime={"keepbook": "0.1.0"})
    return [
        p.Contracts(backends=[p.Backend(name="nil", protection="none", evidence="nil", available=True)]),
        p.CreateKeep(backend="nil", profile="production"),
        p.KeepInfo(id="abc", backend="nil", profile="debug", state="ready", created=1.5),
        p.KeepList(keeps=[p.KeepInfo(id="abc", backend="nil", profile="debug", state="ready", created=1.0)]),
        p.AttestRequest(nonce=NONCE),
        p.AttestResponse(evidence_kind="nil", evidence=b"e", certs=[b"c"], hpke_suite="x",
                         hpke_public_key=bytes(32), config=cfg.to_cbor(), nonce=NONCE),
        p.ProvisionRequest(sealed=bytes(48)),
        p.ProvisionResponse(endpoint="https://127.0.0.1:1", server_cert=b"der"),
        p.Sealed(tls_key=b"k", client_cert=b"c"),
        p.ErrorBody(status=400, reason="no"),
        p.Start(config=b"\xa0", keep_id="k"),
        p.Lifecycle(event="booted"),
        p.DebugLog(text="x"),
        p.RunRequest(cell_id="c1", kind="wasm", module=b"\0asm", invoke="f", args=[1, 2.5]),
        p.RunRequest(cell_id="c2", kind="python", code="1+1"),
        p.RunRequest(cell_id="c3", kind="wasm", module=b"\0asm", argv=["a", "-v"],
                     env=[["K", "V=W"]], stdin=b"in\n"),
        p.Request(op="interrupt"),
        p.Event(kind="stream", content={"name": "stdout", "text": "hi"}),
        p.Reply(ok=True, content={}),
        cfg,
    ]


@pytest.mark.parametrize("msg", samples(), ids=lambda m: m.MSG)
def test_round_trip(msg: p.Message) -> None:
    data = msg.to_cbor()
    again = type(msg).from_cbor(data)
    assert again.to_cbor() == data
    assert p.decode_any(data).to_cbor() == data


def test_config_digest_is_deterministic_and_sensitive() -> None:
    a = p.KeepConfig(keep_id="test-keep", backend="nil", profile="staging", limits=dict(p.DEFAULT_LIMITS), policy=b"",
                     runtime={"k": "1"})
    b = p.KeepConfig(keep_id="test-keep", backend="nil", profile="production", limits=dict(p.DEFAULT_LIMITS), policy=b"",
                     runtime={"k": "1"})
    assert a.digest() == p.KeepConfig.from_cbor(a.to_cbor()).digest()
    assert a.digest() != b.digest()


def test_report_data_binds_every_part() -> None:
    base = p.report_data(NONCE, bytes(32), bytes(48))
    assert len(base) == 64
    assert p.report_data(bytes(32), bytes(32), bytes(48)) != base
    assert p.report_data(NONCE, b"\1" * 32, bytes(48)) != base
    assert p.report_data(NONCE, bytes(32), b"\1" * 48) != base
    # length prefixes: moving a byte between parts changes the digest
    assert p.report_data(NONCE + b"\0", bytes(31), bytes(48)) != p.report_data(NONCE, bytes(32), bytes(48))


def enc(d: object) -> bytes:
    return cbor2.dumps(d)


BAD = [
    (b"", "empty body"),
    (b"\xff", "malformed CBOR"),
    (b"\x1b", "malformed CBOR"),
    (enc([1, 2]), "expected a CBOR map"),
    (enc({"msg": "attest", "nonce": NONCE}), "no protocol version"),
    (enc({"v": 2, "msg": "attest", "nonce": NONCE}), "unsupported protocol version 2"),
    (enc({"v": "1", "msg": "attest", "nonce": NONCE}), "unsupported protocol version"),
    (enc({"v": True, "msg": "attest", "nonce": NONCE}), "unsupported protocol version"),
    (enc({"v": 1, "msg": "nope"}), "unknown message type"),
    (enc({"v": 1, "msg": "attest"}), "required field 'nonce' is missing"),
    (enc({"v": 1, "msg": "attest", "nonce": "text"}), "attest.nonce: expected bytes"),
    (enc({"v": 1, "msg": "attest", "nonce": b"short"}), "below the minimum"),
    (enc({"v": 1, "msg": "attest", "nonce": bytes(65)}), "exceeds the limit"),
    (enc({"v": 1, "msg": "attest", "nonce": NONCE, "extra": 1}), "unknown field(s) extra"),
    (enc({"v": 1, "msg": "create_keep", "backend": "nil", "profile": "root", "limits": p.DEFAULT_LIMITS,
          "policy": b""}), "is not one of"),
    (enc({"v": 1, "msg": "create_keep", "backend": "nil", "profile": "debug",
          "limits": {**p.DEFAULT_LIMITS, "memory_bytes": -1}, "policy": b""}), "outside"),
    (enc({"v": 1, "msg": "create_keep", "backend": "nil", "profile": "debug",
          "limits": {**p.DEFAULT_LIMITS, "cpu": 1}, "policy": b""}), "unknown limit"),
    (enc({"v": 1, "msg": "run", "cell_id": "c", "kind": "wasm"}), "needs 'module'"),
    (enc({"v": 1, "msg": "run", "cell_id": "c", "kind": "python", "code": "x", "args": ["a"]}),
     "expected a number"),
    (bytes.fromhex("d8236161"), "semantic tag 35"),        # regex tag
    (bytes.fromhex("c11a514b67b0"), "semantic tag 1"),     # epoch datetime tag
    (b"\x81" * 40 + b"\x00", "nest"),
    (enc({1: 2}), "not a text string"),
    (b"\xa2\x61a\x01\x61a\x02", "malformed CBOR"),         # duplicate keys
]


@pytest.mark.parametrize("data,reason", BAD, ids=[r for _, r in BAD])
def test_rejects_with_reason(data: bytes, reason: str) -> None:
    with pytest.raises(p.ProtocolError) as exc:
        p.decode_any(data)
    assert reason in exc.value.reason
    assert 400 <= exc.value.status < 500


def test_oversized_body_is_413() -> None:
    with pytest.raises(p.ProtocolError) as exc:
        p.AttestRequest.from_cbor(b"\x00" * (p.MAX_CONTROL_BYTES + 1))
    assert exc.value.status == 413


def test_message_type_must_match_endpoint() -> None:
    with pytest.raises(p.ProtocolError, match="expected message 'attest'"):
        p.AttestRequest.from_cbor(p.Lifecycle(event="x").to_cbor())


def test_frames_split_anywhere() -> None:
    msgs = [p.Lifecycle(event="a"), p.AttestRequest(nonce=NONCE), p.DebugLog(text="x" * 1000)]
    stream = b"".join(p.encode_frame(m) for m in msgs)
    for cut in (1, 3, 7, 50, len(stream) - 1):
        d = p.FrameDecoder()
        got = []
        d.feed(stream[:cut])
        got += list(d.messages())
        d.feed(stream[cut:])
        got += list(d.messages())
        assert [m.to_cbor() for m in got] == [m.to_cbor() for m in msgs]
        assert d.pending == 0


def test_frame_header_over_limit_refused_before_buffering() -> None:
    d = p.FrameDecoder(max_frame=1024)
    d.feed((10**9).to_bytes(4, "big"))
    with pytest.raises(p.ProtocolError, match="exceeds the limit"):
        list(d.messages())


def test_event_sequence_incremental_and_truncated() -> None:
    data = b"".join(p.encode_event("stream", name="stdout", text=str(i)) for i in range(5))
    d = p.SequenceDecoder()
    out = []
    for i in range(len(data)):
        d.feed(data[i:i + 1])
        out += list(d.events())
    assert [e.content["text"] for e in out] == ["0", "1", "2", "3", "4"]
    d = p.SequenceDecoder()
    d.feed(data[:-2])
    assert len(list(d.events())) == 4 and d.pending > 0  # the truncated tail stays pending


def test_event_sequence_garbage() -> None:
    d = p.SequenceDecoder()
    d.feed(b"\xff\xff")
    with pytest.raises(p.ProtocolError):
        list(d.events())


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_arbitrary_bytes_never_crash(data: bytes) -> None:
    try:
        p.decode_any(data)
    except p.ProtocolError as exc:
        assert exc.reason


_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) |
                       st.text(max_size=20) | st.binary(max_size=20),
                       lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                       max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(samples()), st.text(max_size=12), _values)
def test_one_field_wrong_is_rejected_or_valid(msg: p.Message, key: str, value: object) -> None:
    """Structure-aware: a valid message with one field replaced by anything."""
    d = msg.to_dict()
    d[key] = value
    try:
        again = p.decode_any(cbor2.dumps(d))
    except p.ProtocolError as exc:
        assert exc.reason
    else:
        again.validate()


@pytest.mark.parametrize("fields,words", [
    ({"argv": ["ok", 3]}, "run.argv[1]"),
    ({"argv": ["nul\0"]}, "without NUL"),
    ({"argv": ["a"] * (p.MAX_WASI_ITEMS + 1)}, "exceeds the limit"),
    ({"env": [["K"]]}, "run.env[0]"),
    ({"env": [["", "v"]]}, "NAME not empty"),
    ({"env": [["A=B", "v"]]}, "without '='"),
    ({"env": ["K=V"]}, "run.env[0]"),
    ({"stdin": "text"}, "run.stdin: expected bytes"),
    ({"stdin": bytes(p.MAX_STDIN_BYTES + 1)}, "exceeds the limit"),
])
def test_malformed_wasi_inputs_are_refused_with_the_field(fields, words) -> None:
    body = {"v": 1, "msg": "run", "cell_id": "c", "kind": "wasm", "module": b"\0asm", **fields}
    with pytest.raises(p.ProtocolError, match=re.escape(words)):
        p.RunRequest.from_cbor(cbor2.dumps(body))


def test_wasi_inputs_are_for_wasm_cells_only() -> None:
    with pytest.raises(p.ProtocolError, match="for wasm cells only"):
        p.RunRequest(cell_id="c", kind="python", code="1", argv=["x"]).validate()
