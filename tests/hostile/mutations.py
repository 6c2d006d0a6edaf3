"""Structure-aware fuzz inputs for every keepbook decoder and endpoint, shared by the hypothesis
tests (tests/hostile/test_fuzz_*.py) and the atheris harnesses (tools/fuzz/).

Each generator takes a ``random.Random`` and returns bytes: a *valid* message with one thing
wrong — a field of the wrong type, missing, unknown or oversized, a wrong version or name, deep
nesting, a semantic tag, duplicate or non-text keys, a huge declared length — or a valid
encoding truncated, concatenated, or with flipped bytes.  Plus raw random bytes."""

from __future__ import annotations

import hashlib
import math
import os
import random
import struct
from pathlib import Path
from typing import Any, Callable

import cbor2

from keepbook.keep.shared import protocol as p

HELLO_WASM = bytes.fromhex(  # (module (func (export "_start")))
    "0061736d0100000001040160000003020100070a01065f737461727400000a040102000b")

LIMITS = dict(p.DEFAULT_LIMITS)
CONFIG = {"backend": "nil", "profile": "staging", "limits": LIMITS, "policy": b""}

#: hand-made valid field values where the generic ones would not validate
OVERRIDES: dict[str, dict[str, Any]] = {
    "create_keep": {"backend": "nil", "limits": LIMITS},
    "keep_config": {"backend": "nil", "limits": LIMITS, "runtime": {"keepbook": "0.1.0"}},
    "start": {"config": p.dumps(CONFIG), "keep_id": "k0"},
    "run": {"cell_id": "c1", "kind": "wasm", "module": HELLO_WASM},
    "request": {"op": "status"},
    "event": {"kind": "status", "content": {"ok": True}},
    "contracts": {"backends": [{"v": 1, "msg": "backend", "name": "nil", "protection": "none",
                                "evidence": "nil", "available": True, "note": ""}]},
    "keep_list": {"keeps": []},
    "attest_response": {"evidence_kind": "nil", "evidence": bytes(64), "certs": [],
                        "hpke_suite": "x25519-hkdfsha256-aes128gcm", "hpke_public_key": bytes(32),
                        "config": b"\xa0", "nonce": bytes(32)},
    "error": {"status": 400, "reason": "bad"},
}


def _generic(spec: p.F) -> Any:
    if spec.choices:
        return spec.choices[0]
    t = spec.types[0]
    n = spec.min_len or 1
    return {str: "x" * n, bytes: b"\x01" * n, int: 1, float: 1.0, bool: True, list: [],
            dict: {}}.get(t)


def template(name: str) -> dict[str, Any]:
    """A valid wire dict of message ``name``."""
    cls = p._REGISTRY[name]
    out: dict[str, Any] = {"v": p.PROTOCOL_VERSION, "msg": name}
    for field, spec in cls.SPEC.items():
        if spec.required:
            out[field] = _generic(spec)
    out.update(OVERRIDES.get(name, {}))
    return out


def templates() -> dict[str, dict[str, Any]]:
    out = {}
    for name in sorted(p._REGISTRY):
        t = template(name)
        try:
            p._REGISTRY[name].from_dict(dict(t))
        except p.ProtocolError:
            continue  # a message whose valid form this module does not know yet: raw fuzz only
        out[name] = t
    return out


# ---------------------------------------------------------------- values of every shape

def _weird_value(rng: random.Random, depth: int = 0) -> Any:
    pick = rng.randrange(22)
    if pick == 0:
        return None
    if pick == 1:
        return rng.choice([True, False])
    if pick == 2:
        return rng.choice([0, -1, 1, 2**31, -2**63, 2**63 - 1, 2**64 - 1, 2**64, -2**64 - 1])
    if pick == 3:
        return rng.choice([0.0, -0.0, 1.5, math.inf, -math.inf, math.nan, 1e308])
    if pick == 4:
        return "".join(chr(rng.randrange(1, 0x2FFF)) for _ in range(rng.randrange(8)))
    if pick == 5:
        return rng.randbytes(rng.randrange(80))
    if pick == 6:
        return "x" * rng.choice([65, 129, 257, 513, 4097, 65537])      # just over a limit
    if pick == 7:
        return b"\0" * rng.choice([33, 65, 4097, 16385, 65537, 262145])
    if pick == 8 and depth < 3:
        return [_weird_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    if pick == 9 and depth < 3:
        return {rng.choice(["a", "v", "msg", "ok", ""]): _weird_value(rng, depth + 1)
                for _ in range(rng.randrange(4))}
    if pick == 10:
        return cbor2.CBORTag(rng.choice([0, 1, 2, 3, 24, 32, 258, 55799, 12345, 2**32]), "x")
    if pick == 11:
        return cbor2.CBORSimpleValue(rng.choice([0, 19, 32, 255]))
    if pick == 12:
        return [0] * rng.choice([4097, 5000])
    if pick == 13:
        return {str(i): i for i in range(4097)}
    if pick == 14:
        return rng.choice(["wasm", "python", "debug", "staging", "production", "status", "nil"])
    if pick == 15:
        return rng.choice([{"memory_bytes": 0, "timeout_s": 0, "output_bytes": 0},
                           {**LIMITS, "timeout_s": math.nan}, {**LIMITS, "memory_bytes": -1},
                           {**LIMITS, "fuel": 2**64}, {**LIMITS, "extra": 1}, {}])
    return rng.choice([0, "", b"", [], {}, 1.0, "a", b"a"])


def _nest(depth: int, leaf: bytes = b"\x00", as_map: bool = False) -> bytes:
    """Raw CBOR of ``depth`` nested arrays (or single-entry maps) around ``leaf``."""
    head = b"\xa1\x61a" if as_map else b"\x81"
    return head * depth + leaf


def _huge_length_header(rng: random.Random) -> bytes:
    major = rng.choice([0x40, 0x60, 0x80, 0xA0])
    n = rng.choice([2**31, 2**32 - 1, 2**40, 2**63, 2**64 - 1])
    return bytes([major | 27]) + n.to_bytes(8, "big") + rng.randbytes(rng.randrange(8))


# ---------------------------------------------------------------- the mutations


def mutate(rng: random.Random, base: dict[str, Any]) -> bytes:
    """One wrong thing in an otherwise valid message (or a broken encoding of it)."""
    msg = dict(base)
    fields = [k for k in msg if k not in ("v", "msg")]
    kind = rng.randrange(20)
    if kind == 0 and fields:                       # a field of the wrong type / value
        msg[rng.choice(fields)] = _weird_value(rng)
    elif kind == 1 and fields:                     # a required field missing
        del msg[rng.choice(fields)]
    elif kind == 2:                                # an unknown field
        msg[rng.choice(["x", "V", "msg2", "\u0000", "é" * 3])] = _weird_value(rng)
    elif kind == 3:                                # wrong version
        msg["v"] = rng.choice([0, 2, -1, "1", 1.0, True, None, 2**64, [1], b"\x01"])
    elif kind == 4:                                # missing version
        msg.pop("v", None)
    elif kind == 5:                                # wrong or unknown message name
        msg["msg"] = rng.choice(list(p._REGISTRY) + ["", "RUN", "attest ", None, 1, "x" * 300])
    elif kind == 6:                                # wrong top-level type
        return cbor2.dumps(rng.choice([[msg.get("v"), msg.get("msg")], 1, "attest", b"\xa0", None, 1.5]))
    elif kind == 7:                                # deep nesting in a field
        depth = rng.choice([p.MAX_DEPTH, p.MAX_DEPTH + 1, p.MAX_DEPTH + 2, 64, 1000, 100000])
        key = rng.choice(fields or ["x"])
        enc = cbor2.dumps({k: v for k, v in msg.items() if k != key})
        return _raw_map_with(enc, key, _nest(depth, as_map=rng.random() < 0.5))
    elif kind == 8:                                # a field with a huge declared length
        key = rng.choice(fields or ["x"])
        enc = cbor2.dumps({k: v for k, v in msg.items() if k != key})
        return _raw_map_with(enc, key, _huge_length_header(rng))
    elif kind == 9:                                # duplicate key
        key = rng.choice(fields or ["v"])
        enc = cbor2.dumps(msg)
        return _raw_map_with(enc, key, cbor2.dumps(msg.get(key, 1)))
    elif kind == 10:                               # a non-text map key
        enc = cbor2.dumps(msg)
        return _raw_map_with(enc, None, cbor2.dumps(0), raw_key=cbor2.dumps(rng.choice([1, b"v", 1.0, None])))
    elif kind == 11:                               # a semantic tag around the whole message
        return cbor2.dumps(cbor2.CBORTag(rng.choice([0, 1, 2, 24, 55799, 40, 1000]), msg))
    elif kind == 12:                               # indefinite-length encoding
        enc = cbor2.dumps(msg)
        return b"\xbf" + enc[1:] + b"\xff" if enc and enc[0] & 0xE0 == 0xA0 and enc[0] < 0xB8 else enc
    enc = cbor2.dumps(msg, canonical=rng.random() < 0.5)
    if kind == 13:                                 # truncated
        return enc[:rng.randrange(len(enc))] if enc else enc
    if kind == 14:                                 # concatenated
        return enc + rng.choice([enc, b"\x00", rng.randbytes(rng.randrange(1, 16))])
    if kind == 15:                                 # flipped bytes
        b = bytearray(enc)
        for _ in range(rng.randrange(1, 4)):
            if b:
                b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        return bytes(b)
    if kind == 16:                                 # a random byte inserted or removed
        i = rng.randrange(len(enc) + 1)
        return enc[:i] + (rng.randbytes(1) if rng.random() < 0.5 else b"") + enc[i + 1:]
    return enc


def _raw_map_with(enc: bytes, key: str | None, value_raw: bytes, raw_key: bytes | None = None) -> bytes:
    """Append one (key, raw value) entry to the CBOR map ``enc`` (a definite map under 24 entries)."""
    if not enc or enc[0] & 0xE0 != 0xA0 or (enc[0] & 0x1F) >= 23:
        return enc + value_raw
    return bytes([enc[0] + 1]) + enc[1:] + (raw_key if raw_key is not None else cbor2.dumps(key)) + value_raw


def raw(rng: random.Random) -> bytes:
    pick = rng.randrange(5)
    if pick == 0:
        return rng.randbytes(rng.randrange(64))
    if pick == 1:
        return _huge_length_header(rng)
    if pick == 2:
        return _nest(rng.choice([17, 100, 5000]), as_map=rng.random() < 0.5)
    if pick == 3:
        return b""
    return cbor2.dumps(_weird_value(rng))


_TEMPLATES: dict[str, dict[str, Any]] | None = None


def message_bytes(rng: random.Random, names: list[str] | None = None) -> bytes:
    """A fuzz input for a decoder of the given message names (all, if None)."""
    global _TEMPLATES
    if _TEMPLATES is None:
        _TEMPLATES = templates()
    pool = [n for n in (names or list(_TEMPLATES)) if n in _TEMPLATES]
    if not pool or rng.random() < 0.1:
        return raw(rng)
    return mutate(rng, _TEMPLATES[rng.choice(pool)])


# ---------------------------------------------------------------- streams


def frame_stream(rng: random.Random) -> list[bytes]:
    """Chunks for a FrameDecoder: frames with right and wrong length headers, split anywhere."""
    data = b""
    for _ in range(rng.randrange(1, 4)):
        body = message_bytes(rng)
        length = len(body)
        r = rng.random()
        if r < 0.1:
            length = rng.choice([0, 2**31, 2**32 - 1, p.MAX_MESSAGE_BYTES + 1])
        elif r < 0.2:
            length = max(0, length + rng.choice([-1, 1, 7]))
        data += struct.pack(">I", length) + body
    if rng.random() < 0.2:
        data = data[:rng.randrange(len(data) + 1)]
    return _chunks(rng, data)


def event_stream(rng: random.Random) -> list[bytes]:
    """Chunks for a SequenceDecoder: valid and broken events, concatenated, split anywhere."""
    data = b""
    for _ in range(rng.randrange(1, 5)):
        if rng.random() < 0.5:
            data += p.Event(kind=rng.choice(p.EVENT_KINDS), content={"text": "x" * rng.randrange(9)}).to_cbor()
        else:
            data += message_bytes(rng, ["event"])
    return _chunks(rng, data)


def _chunks(rng: random.Random, data: bytes) -> list[bytes]:
    cuts = sorted(rng.randrange(len(data) + 1) for _ in range(rng.randrange(4)))
    out, last = [], 0
    for c in cuts + [len(data)]:
        out.append(data[last:c])
        last = c
    return out


# ---------------------------------------------------------------- HTTP requests

CONTENT_TYPES = [p.CBOR, p.CBOR, p.CBOR, p.CBOR + "; charset=utf-8", "application/json", "text/plain",
                 "", "application/cbor-seq", "APPLICATION/CBOR", "application/octet-stream",
                 "multipart/form-data; boundary=x", "application/x-www-form-urlencoded"]


def http_request(rng: random.Random, paths: list[tuple[str, str, list[str]]]) -> tuple[str, str, str, bytes]:
    """(method, path, content type, body) for one of ``paths`` = [(method, path, message names)]."""
    method, path, names = rng.choice(paths)
    if rng.random() < 0.05:
        method = rng.choice(["GET", "PUT", "PATCH", "DELETE", "POST", "OPTIONS"])
    if rng.random() < 0.05:
        path = rng.choice([path + "/", path + "/x", path.replace("v1", "v2"), path + "%00",
                           "/v1/keeps/" + "a" * 300, "/v1/keeps/../health", "/"])
    body = message_bytes(rng, names) if names else (b"" if rng.random() < 0.5 else raw(rng))
    return method, path, rng.choice(CONTENT_TYPES), body


Check = Callable[[int, bytes], None]


def assert_clean_refusal(status: int, body: bytes, *, allow: tuple[int, ...] = (200, 201),
                         request: tuple[str, str, str, bytes] | None = None,
                         target: str = "endpoint") -> None:
    """The property every endpoint must keep: a success, or a 4xx whose CBOR error body has a
    reason.  5xx, or an unreadable refusal, is a finding — reported loudly with the input that
    found it (saved under build/fuzz/found/, see :func:`found`)."""
    if status in allow:
        return
    where = "" if request is None else "\n" + found(target, *request)
    assert 400 <= status < 500, f"status {status}: {body[:200]!r}{where}"
    try:
        err = p.ErrorBody.from_cbor(body)
    except p.ProtocolError as exc:
        raise AssertionError(f"status {status} with an unreadable error body ({exc.reason}){where}") from None
    assert err.reason.strip(), f"a refusal without a reason{where}"


FOUND_DIR = Path(__file__).resolve().parents[2] / "build" / "fuzz" / "found"


def found(target: str, method: str, path: str, ctype: str, body: bytes) -> str:
    """Save an input that broke a property and describe it for the failure message: where it is,
    the request line, and the body's first bytes (as CBOR when it decodes)."""
    FOUND_DIR.mkdir(parents=True, exist_ok=True)
    name = f"{target.replace(' ', '_')}-{hashlib.sha256(body).hexdigest()[:12]}"
    (FOUND_DIR / f"{name}.bin").write_bytes(body)
    (FOUND_DIR / f"{name}.txt").write_text(f"{method} {path}\nContent-Type: {ctype}\n")
    try:
        shown = p.shown(cbor2.loads(body), 300)
    except Exception:
        shown = body[:150].hex() + ("…" if len(body) > 150 else "")
    return (f"FOUND BY FUZZING: {method} {path} (Content-Type {ctype or 'none'!r}), a body of "
            f"{len(body)} bytes: {shown}\n  input saved: {FOUND_DIR / name}.bin (request line in "
            f"{name}.txt) — keep it as a regression test")


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def seed_rng(data: bytes) -> random.Random:
    return random.Random(data)


__all__ = ["message_bytes", "frame_stream", "event_stream", "http_request", "assert_clean_refusal",
           "rss_kib", "templates", "raw", "mutate", "seed_rng", "HELLO_WASM"]
_ = os
