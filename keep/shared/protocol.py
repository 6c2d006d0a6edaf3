"""The keep manager protocol, sans-IO.

Every message that crosses a process boundary in keepbook is defined here, once, as a typed
object with ``to_cbor``/``from_cbor``.  No sockets, no files, no clocks: keepmgr, keepldr,
wasmldr and the kernel all import this module and feed it bytes, and tests do the same.

Wire rules (see docs/protocol.md):

* Every message is a CBOR map with ``"v"`` (protocol version) and ``"msg"`` (message name),
  plus the message's own fields.  Unknown versions, unknown or missing fields, wrong types and
  oversized values are rejected with :class:`ProtocolError`, whose ``reason`` says which.
* Only plain CBOR types are accepted: unsigned/negative integers, byte and text strings, arrays,
  maps with text keys, booleans, null and floats.  Semantic tags are refused (they would let a
  peer make the decoder build arbitrary objects), duplicate keys are refused, nesting is bounded.
* Between keepmgr, keepldr and wasmldr, messages travel as frames: a 4-byte big-endian length
  followed by one CBOR message (:func:`encode_frame`, :class:`FrameDecoder`).
* The attested channel streams events as a CBOR sequence (RFC 8742), one event per item
  (:class:`SequenceDecoder`).
"""

from __future__ import annotations

import base64
import hashlib
import io
import struct
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Iterator, Mapping

import cbor2

from keepbook.keep.shared.facts import DEFAULT_LIMITS, PROFILES, PROTECTION_LEVELS

PROTOCOL_VERSION = 1
SUPPORTED_VERSIONS = frozenset({1})
CBOR = "application/cbor"
CBOR_SEQ = "application/cbor-seq"

#: Largest message we accept anywhere (a Wasm module or a dataset chunk is the big case).
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
#: Largest control message (everything except run requests and uploads).
MAX_CONTROL_BYTES = 1 * 1024 * 1024
MAX_DEPTH = 16
MAX_TEXT = 64 * 1024
MAX_ITEMS = 4096


REPORT_DATA_DOMAIN = b"keepbook/report-data/v1"
FINGERPRINT_DOMAIN = b"keepbook/keep-fingerprint/v1"
PROVISION_INFO_DOMAIN = b"keepbook/provision/v1"


class ProtocolError(Exception):
    """The root of every protocol failure.  ``reason`` says what broke, ``status`` is the HTTP
    status to answer with.  As in h11, two kinds: :class:`LocalProtocolError` (this side was
    about to break the protocol — a wrong call, never sent) and :class:`RemoteProtocolError` (the
    peer's bytes or move are refused)."""

    def __init__(self, reason: str, status: int = 400):
        super().__init__(reason)
        self.reason = reason
        self.status = status


class LocalProtocolError(ProtocolError):
    """This side tried to send something the protocol does not allow; nothing was sent."""


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes or made a move the protocol does not allow."""


def _as(kind: type[ProtocolError], exc: ProtocolError) -> ProtocolError:
    """``exc`` as a ``kind`` error (already one: itself), keeping reason and status."""
    if isinstance(exc, (LocalProtocolError, RemoteProtocolError)):
        return exc
    return kind(exc.reason, exc.status)


# --------------------------------------------------------------------------- strict CBOR codec


def _refuse_tag(*args: Any) -> Any:
    number = next((a.tag for a in args if hasattr(a, "tag")), "unknown")
    raise ProtocolError(f"CBOR semantic tag {number} is not allowed in keepbook messages")


# cbor2 decodes these tags itself unless told otherwise; every one of them is refused.
_KNOWN_TAGS = (0, 1, 2, 3, 4, 5, 24, 25, 28, 29, 30, 35, 36, 37, 100, 256, 258, 260, 261,
               1004, 55799)


def _refuser(number: int) -> Any:
    def refuse(*_args: Any) -> Any:
        raise ProtocolError(f"CBOR semantic tag {number} is not allowed in keepbook messages")
    return refuse


_SEMANTIC_REFUSALS = {t: _refuser(t) for t in _KNOWN_TAGS}
_PLAIN = (int, bytes, str, bool, float, type(None))


def _check_plain(value: Any, depth: int = 0) -> None:
    if depth > MAX_DEPTH:
        raise ProtocolError(f"message nests deeper than {MAX_DEPTH} levels")
    if isinstance(value, _PLAIN):
        return
    if isinstance(value, list):
        if len(value) > MAX_ITEMS:
            raise ProtocolError(f"array of {len(value)} items exceeds the limit of {MAX_ITEMS}")
        for item in value:
            _check_plain(item, depth + 1)
        return
    if isinstance(value, dict):
        if len(value) > MAX_ITEMS:
            raise ProtocolError(f"map of {len(value)} entries exceeds the limit of {MAX_ITEMS}")
        for key, item in value.items():
            if not isinstance(key, str):
                raise ProtocolError(f"map key {shown(key)} is not a text string")
            _check_plain(item, depth + 1)
        return
    raise ProtocolError(f"CBOR value of type {type(value).__name__} is not allowed")


def dumps(value: Any) -> bytes:
    """Deterministic (canonical) CBOR, so digests of configs are stable."""
    return cbor2.dumps(value, canonical=True)


class _Incomplete(Exception):
    """The stream ended inside an item (only meaningful for CBOR sequences)."""


def _decode_one(stream: io.BytesIO, what: str) -> Any:
    """One strictly decoded, plain CBOR item from ``stream``; every failure becomes a
    ProtocolError with a reason, except a premature end, which is :class:`_Incomplete`."""
    try:
        value = cbor2.CBORDecoder(stream, tag_hook=_refuse_tag, semantic_decoders=_SEMANTIC_REFUSALS,
                                  max_depth=MAX_DEPTH + 1, allow_duplicate_keys=False,
                                  str_errors="strict").decode()
    except ProtocolError:
        raise
    except cbor2.CBORDecodeEOF:
        raise _Incomplete from None
    except RecursionError:
        raise ProtocolError(f"message nests deeper than {MAX_DEPTH} levels") from None
    except Exception as exc:  # cbor2 raises several types; all mean "not valid CBOR for us"
        cause = exc.__cause__ if isinstance(exc.__cause__, ProtocolError) else None
        if cause is not None:
            raise cause from None
        raise ProtocolError(f"malformed CBOR{what}: {exc}") from None
    _check_plain(value)
    return value


def loads(data: bytes, *, max_bytes: int = MAX_MESSAGE_BYTES) -> Any:
    """Decode one CBOR item strictly; raise :class:`RemoteProtocolError` with a reason otherwise."""
    try:
        return _loads(data, max_bytes)
    except ProtocolError as exc:
        raise _as(RemoteProtocolError, exc) from None


def _loads(data: bytes, max_bytes: int) -> Any:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ProtocolError("message body must be bytes")
    if len(data) == 0:
        raise ProtocolError("empty body: expected one CBOR message")
    if len(data) > max_bytes:
        raise ProtocolError(f"message of {len(data)} bytes exceeds the limit of {max_bytes}",
                            status=413)
    # A decoder on a stream (not cbor2.loads, which ignores what follows the first item), so
    # trailing bytes — a second message smuggled after the first — are refused.
    stream = io.BytesIO(data)
    try:
        value = _decode_one(stream, "")
    except _Incomplete:
        raise ProtocolError("malformed CBOR: the message ends in the middle of an item") from None
    if stream.tell() != len(data):
        raise ProtocolError(f"malformed CBOR: {len(data) - stream.tell()} bytes of trailing data "
                            "after the message (one CBOR item per body)")
    return value


def decode_sequence(blob: bytes, *, what: str = "item") -> list[tuple[bytes, Any]]:
    """Every item of a complete CBOR sequence (RFC 8742), strictly decoded, each with its own
    bytes (so a caller can check canonical encoding or hash it).  A cut last item is refused."""
    stream = io.BytesIO(blob)
    out: list[tuple[bytes, Any]] = []
    while stream.tell() < len(blob):
        start = stream.tell()
        try:
            item = _decode_one(stream, f" in {what} {len(out)}")
        except _Incomplete:
            raise RemoteProtocolError(f"malformed CBOR: {what} {len(out)} ends in the middle") from None
        except ProtocolError as exc:
            raise _as(RemoteProtocolError, exc) from None
        out.append((blob[start:stream.tell()], item))
    return out


# --------------------------------------------------------------------------- field validation


@dataclass(frozen=True)
class F:
    """A field's wire contract: allowed python types, whether required, and size bounds."""

    types: tuple[type, ...]
    required: bool = True
    max_len: int | None = None
    min_len: int | None = None
    choices: tuple[Any, ...] | None = None


def _check_field(msg: str, name: str, spec: F, value: Any) -> None:
    """Type, then size, then value: a field's size is checked before anything else looks at
    it (a 65,537-character ``kind`` once reached the ``choices`` check, whose error message
    quoted it whole and broke the error body's own limit — a 500 instead of a 400)."""
    if value is None and not spec.required:
        return
    if isinstance(value, bool) and bool not in spec.types:
        raise ProtocolError(f"{msg}.{name}: expected {_type_names(spec.types)}, got a boolean")
    if not isinstance(value, spec.types):
        raise ProtocolError(
            f"{msg}.{name}: expected {_type_names(spec.types)}, got {type(value).__name__}")
    if isinstance(value, (bytes, str, list, dict)):
        limit = spec.max_len
        if spec.choices is not None:
            longest = max(len(c) for c in spec.choices if isinstance(c, (str, bytes)))
            limit = longest if limit is None else min(limit, longest)
        if limit is not None and len(value) > limit:
            status = 413 if isinstance(value, bytes) and limit > 4096 else 400
            what = (f"a value {len(value)} long is not one of {', '.join(map(str, spec.choices))}"
                    if spec.choices is not None and spec.max_len is None else
                    f"length {len(value)} exceeds the limit of {limit}")
            raise ProtocolError(f"{msg}.{name}: {what}", status=status)
        if spec.min_len is not None and len(value) < spec.min_len:
            raise ProtocolError(f"{msg}.{name}: length {len(value)} is below the minimum of {spec.min_len}")
    if spec.choices is not None and value not in spec.choices:
        raise ProtocolError(f"{msg}.{name}: {shown(value)} is not one of "
                            f"{', '.join(map(str, spec.choices))}")
    if isinstance(value, int) and not isinstance(value, bool) and spec.max_len is not None:
        if value < 0 or value > spec.max_len:
            raise ProtocolError(f"{msg}.{name}: {shown(value)} is outside 0..{spec.max_len}")


def cut(text: str, limit: int = 200) -> str:
    """Text from a peer (field names, say) for an error message, cut to ``limit`` characters."""
    return text if len(text) <= limit else text[:limit] + f"… ({len(text)} characters)"


def shown(value: Any, limit: int = 80) -> str:
    """A peer's value for an error message: its repr, cut to ``limit`` characters, so a reason
    never grows with what the peer sent."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return f"an integer of {value.bit_length()} bits"
    return cut(repr(value), limit)


def _type_names(types: tuple[type, ...]) -> str:
    names = {bytes: "bytes", str: "text", int: "integer", float: "number", bool: "boolean",
             list: "array", dict: "map", type(None): "null"}
    return " or ".join(names.get(t, t.__name__) for t in types)


_REGISTRY: dict[str, type["Message"]] = {}


class Message:
    """Base class: subclasses are dataclasses with a ``MSG`` name and a ``SPEC`` of fields."""

    MSG: ClassVar[str] = ""
    SPEC: ClassVar[Mapping[str, F]] = {}
    MAX_BYTES: ClassVar[int] = MAX_CONTROL_BYTES

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.MSG:
            _REGISTRY[cls.MSG] = cls

    # -- encoding
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"v": PROTOCOL_VERSION, "msg": self.MSG}
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if value is None and not self.SPEC[f.name].required:
                continue
            out[f.name] = value
        return out

    def to_cbor(self) -> bytes:
        """The message's bytes; :class:`LocalProtocolError` if it breaks its own contract."""
        try:
            self.validate()
        except ProtocolError as exc:
            raise _as(LocalProtocolError, exc) from None
        return dumps(self.to_dict())

    def validate(self) -> None:
        for f in fields(self):  # type: ignore[arg-type]
            _check_field(self.MSG, f.name, self.SPEC[f.name], getattr(self, f.name))
        self._check()

    def _check(self) -> None:
        """Cross-field rules; subclasses override."""

    # -- decoding
    @classmethod
    def from_dict(cls, raw: Any) -> "Message":
        """The message in a decoded CBOR map; :class:`RemoteProtocolError` naming the field."""
        try:
            return cls._from_dict(raw)
        except ProtocolError as exc:
            raise _as(RemoteProtocolError, exc) from None

    @classmethod
    def _from_dict(cls, raw: Any) -> "Message":
        if not isinstance(raw, dict):
            raise ProtocolError(f"{cls.MSG or 'message'}: expected a CBOR map, got {type(raw).__name__}")
        version = raw.get("v")
        if version is None:
            raise ProtocolError("message has no protocol version field 'v'")
        if isinstance(version, bool) or not isinstance(version, int) or version not in SUPPORTED_VERSIONS:
            raise ProtocolError(
                f"unsupported protocol version {shown(version)}; this peer speaks version "
                f"{', '.join(map(str, sorted(SUPPORTED_VERSIONS)))}")
        name = raw.get("msg")
        target = cls
        if cls is Message or not cls.MSG:
            if not isinstance(name, str) or name not in _REGISTRY:
                raise ProtocolError(f"unknown message type {shown(name)}")
            target = _REGISTRY[name]
        elif name != cls.MSG:
            raise ProtocolError(f"expected message {cls.MSG!r}, got {shown(name)}")
        known = {f.name for f in fields(target)}  # type: ignore[arg-type]
        extra = set(raw) - known - {"v", "msg"}
        if extra:
            raise ProtocolError(f"{target.MSG}: unknown field(s) {cut(', '.join(sorted(extra)))}")
        kwargs: dict[str, Any] = {}
        for fname in known:
            spec = target.SPEC[fname]
            if fname not in raw:
                if spec.required:
                    raise ProtocolError(f"{target.MSG}: required field {fname!r} is missing")
                continue
            kwargs[fname] = raw[fname]
        obj = target(**kwargs)
        obj.validate()
        return obj

    @classmethod
    def from_cbor(cls, data: bytes) -> "Message":
        limit = cls.MAX_BYTES if cls.MSG else MAX_MESSAGE_BYTES
        return cls.from_dict(loads(data, max_bytes=limit))


def decode_any(data: bytes) -> Message:
    """Decode a message of any registered type (used on framed pipes)."""
    return Message.from_cbor(data)


# --------------------------------------------------------------------------- keep configuration

LIMITS_SPEC: dict[str, F] = {
    "memory_bytes": F((int,), max_len=64 * 1024**3),
    "timeout_s": F((int, float)),
    "output_bytes": F((int,), max_len=1024**3),
    "fuel": F((int,), required=False, max_len=2**63 - 1),
}



def check_limits(where: str, limits: Any) -> None:
    if not isinstance(limits, dict):
        raise ProtocolError(f"{where}: limits must be a map")
    extra = set(limits) - set(LIMITS_SPEC)
    if extra:
        raise ProtocolError(f"{where}: unknown limit(s) {cut(', '.join(sorted(extra)))}")
    for name, spec in LIMITS_SPEC.items():
        if name not in limits:
            if spec.required:
                raise ProtocolError(f"{where}: limit {name!r} is missing")
            continue
        _check_field(where, name, spec, limits[name])
    if not 0 < float(limits["timeout_s"]) <= 7 * 24 * 3600:
        raise ProtocolError(f"{where}: timeout_s must be between 0 and one week")
    if limits["memory_bytes"] < 1024 * 1024:
        raise ProtocolError(f"{where}: memory_bytes must be at least 1 MiB")


@dataclass
class KeepConfig(Message):
    """What the Keep is configured to do.  Its digest goes into the attested report data, so the
    host cannot change profile, policy or limits without the client noticing."""

    MSG: ClassVar[str] = "keep_config"
    SPEC: ClassVar[Mapping[str, F]] = {
        "backend": F((str,), max_len=64),
        "profile": F((str,), choices=PROFILES),
        "limits": F((dict,)),
        "policy": F((bytes,), max_len=256 * 1024),
        "runtime": F((dict,)),
        "keys": F((dict,), required=False, max_len=16),
        "keep_id": F((str,), max_len=64, min_len=1),
    }
    backend: str
    profile: str
    limits: dict
    policy: bytes
    runtime: dict
    #: the id the keep manager gave this Keep, bound into the evidence: evidence from another
    #: Keep (a twin the host started with the same config) names another id
    keep_id: str
    #: Long-lived public keys made inside the Keep at start, bound by the config digest:
    #: ``dataset/<hpke suite>`` (data owners seal datasets to it), ``audit/ed25519`` (signs the
    #: audit log's head).  Absent in configs that predate them.
    keys: dict | None = None

    def _check(self) -> None:
        check_limits("keep_config", self.limits)
        for k, v in self.runtime.items():
            if not isinstance(v, str) or len(v) > 256:
                raise ProtocolError(f"keep_config.runtime.{shown(k)}: expected short text")
        for k, v in (self.keys or {}).items():
            if len(k) > 64 or not isinstance(v, bytes) or not 32 <= len(v) <= 4096:
                raise ProtocolError(f"keep_config.keys.{shown(k)}: expected a public key (32..4096 bytes)")

    def digest(self) -> bytes:
        return hashlib.sha384(self.to_cbor()).digest()

    def fingerprint(self) -> str:
        """A short name of this Keep instance (its attested config, which holds keys made in
        it), for people to compare out of band: ``kf:xxxx-xxxx-xxxx-xxxx`` (80 bits)."""
        d = hashlib.sha256(FINGERPRINT_DOMAIN + self.digest()).digest()
        b32 = base64.b32encode(d[:10]).decode().lower()
        return "kf:" + "-".join(b32[i:i + 4] for i in range(0, 16, 4))


def normalize_fingerprint(text: str) -> str:
    """A Keep fingerprint as typed (any case, with or without ``kf:`` and dashes) in its one
    written form; ValueError if it is not one."""
    raw = str(text).strip().lower().removeprefix("kf:").replace("-", "").replace(" ", "")
    if len(raw) != 16 or any(c not in "abcdefghijklmnopqrstuvwxyz234567" for c in raw):
        raise ValueError(f"{text!r} is not a Keep fingerprint (kf:xxxx-xxxx-xxxx-xxxx, as "
                         "`%keep status` shows it)")
    return "kf:" + "-".join(raw[i:i + 4] for i in range(0, 16, 4))


def report_data(nonce: bytes, hpke_public_key: bytes, config_digest: bytes) -> bytes:
    """The 64 bytes the TEE signs: SHA-512(domain ‖ nonce ‖ E.pub ‖ config digest).

    Each part is length-prefixed (2 bytes, big-endian) so no two inputs share an encoding."""
    h = hashlib.sha512()
    for part in (REPORT_DATA_DOMAIN, nonce, hpke_public_key, config_digest):
        h.update(struct.pack(">H", len(part)))
        h.update(part)
    return h.digest()


def provision_info(report_data_value: bytes) -> bytes:
    """HPKE ``info`` for the sealed provisioning message: binds it to one attestation."""
    return PROVISION_INFO_DOMAIN + report_data_value


# --------------------------------------------------------------------------- client <-> keepmgr


#: largest simulated root certificate a contracts answer may carry (a 3072-bit RSA root is ~1.4 KiB)
MAX_SIM_ROOT_BYTES = 8 * 1024


@dataclass
class Backend(Message):
    MSG: ClassVar[str] = "backend"
    SPEC: ClassVar[Mapping[str, F]] = {
        "name": F((str,), max_len=64),
        "protection": F((str,), choices=PROTECTION_LEVELS),
        "evidence": F((str,), max_len=64),
        "available": F((bool,)),
        "note": F((str,), max_len=MAX_TEXT),
        "sim_root": F((bytes,), required=False, max_len=MAX_SIM_ROOT_BYTES, min_len=1),
    }
    name: str
    protection: str
    evidence: str
    available: bool
    note: str = ""
    #: a simulated backend's root certificate (DER, self-signed): the root this manager's Keeps
    #: sign their evidence with, for the user to look at and accept on purpose — never trusted
    #: because the manager sent it (the evidence must chain to a root the user accepted)
    sim_root: bytes | None = None

    def _check(self) -> None:
        if self.sim_root is None:
            return
        if self.protection != "simulated":
            raise ProtocolError(f"backend.sim_root: only a simulated backend has a simulated root; "
                                f"{self.name!r} is {self.protection}")
        from keepbook.keep.shared.evidence.certs import load_der
        from keepbook.keep.shared.evidence.trust import EvidenceError

        try:
            cert = load_der(self.sim_root)   # the one certificate parser
        except EvidenceError:
            raise ProtocolError(f"backend.sim_root of {self.name!r}: not a DER X.509 "
                                "certificate") from None
        if cert.issuer != cert.subject:
            raise ProtocolError(f"backend.sim_root of {self.name!r}: not a root certificate "
                                "(its issuer is not its subject)")


@dataclass
class Contracts(Message):
    MSG: ClassVar[str] = "contracts"
    SPEC: ClassVar[Mapping[str, F]] = {"backends": F((list,), max_len=64)}
    backends: list

    def _check(self) -> None:
        self.backends = [b if isinstance(b, Backend) else Backend.from_dict(b) for b in self.backends]

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d["backends"] = [b.to_dict() for b in self.backends]
        return d


@dataclass
class CreateKeep(Message):
    MSG: ClassVar[str] = "create_keep"
    SPEC: ClassVar[Mapping[str, F]] = {
        "backend": F((str,), max_len=64, min_len=1),
        "profile": F((str,), choices=PROFILES),
        "limits": F((dict,)),
        "policy": F((bytes,), max_len=256 * 1024),
    }
    backend: str
    profile: str = "staging"
    limits: dict = field(default_factory=lambda: dict(DEFAULT_LIMITS))
    policy: bytes = b""

    def _check(self) -> None:
        check_limits("create_keep", self.limits)


KEEP_STATES = ("starting", "ready", "attested", "provisioned", "closed", "failed")


@dataclass
class KeepInfo(Message):
    MSG: ClassVar[str] = "keep_info"
    SPEC: ClassVar[Mapping[str, F]] = {
        "id": F((str,), max_len=64, min_len=1),
        "backend": F((str,), max_len=64),
        "profile": F((str,), choices=PROFILES),
        "state": F((str,), choices=KEEP_STATES),
        "created": F((float, int)),
        "reason": F((str,), required=False, max_len=MAX_TEXT),
        "host_note": F((str,), required=False, max_len=MAX_TEXT),
    }
    id: str
    backend: str
    profile: str
    state: str
    created: float
    reason: str | None = None
    #: how the host says it runs this Keep (e.g. a VM under software emulation) — the host's
    #: word, not attested
    host_note: str | None = None


@dataclass
class KeepList(Message):
    MSG: ClassVar[str] = "keep_list"
    SPEC: ClassVar[Mapping[str, F]] = {"keeps": F((list,), max_len=MAX_ITEMS)}
    keeps: list

    def _check(self) -> None:
        self.keeps = [k if isinstance(k, KeepInfo) else KeepInfo.from_dict(k) for k in self.keeps]

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d["keeps"] = [k.to_dict() for k in self.keeps]
        return d


@dataclass
class AttestRequest(Message):
    MSG: ClassVar[str] = "attest"
    SPEC: ClassVar[Mapping[str, F]] = {"nonce": F((bytes,), min_len=32, max_len=64)}
    nonce: bytes


MAX_COLLATERAL_PARTS = 16
MAX_COLLATERAL_PART = 64 * 1024
MAX_COLLATERAL_BYTES = 256 * 1024


@dataclass
class AttestResponse(Message):
    """What the Keep says about itself.  Nothing here is trusted until verified."""

    MSG: ClassVar[str] = "attest_response"
    SPEC: ClassVar[Mapping[str, F]] = {
        "evidence_kind": F((str,), max_len=64),
        "evidence": F((bytes,), max_len=64 * 1024),
        "certs": F((list,), max_len=16),
        "hpke_suite": F((str,), max_len=64),
        "hpke_public_key": F((bytes,), min_len=32, max_len=4096),
        "config": F((bytes,), max_len=512 * 1024),
        "nonce": F((bytes,), min_len=32, max_len=64),
        # signed vendor collateral carried with the evidence (PCS TCB info / QE identity bodies,
        # issuer chains, CRLs): an untrusted host may carry it, the signatures decide
        "collateral": F((list,), required=False, max_len=MAX_COLLATERAL_PARTS),
    }
    evidence_kind: str
    evidence: bytes
    certs: list
    hpke_suite: str
    hpke_public_key: bytes
    config: bytes
    nonce: bytes
    collateral: list | None = None

    def _check(self) -> None:
        for i, c in enumerate(self.certs):
            if not isinstance(c, bytes) or len(c) > 16 * 1024:
                raise ProtocolError(f"attest_response.certs[{i}]: expected DER bytes up to 16 KiB")
        total = 0
        for i, part in enumerate(self.collateral or []):
            if not isinstance(part, bytes) or not 0 < len(part) <= MAX_COLLATERAL_PART:
                raise ProtocolError(f"attest_response.collateral[{i}]: expected bytes, 1 to "
                                    f"{MAX_COLLATERAL_PART} long")
            total += len(part)
        if total > MAX_COLLATERAL_BYTES:
            raise ProtocolError(f"attest_response.collateral: {total} bytes exceed the limit of "
                                f"{MAX_COLLATERAL_BYTES}", status=413)

    def keep_config(self) -> KeepConfig:
        return KeepConfig.from_cbor(self.config)  # type: ignore[return-value]


@dataclass
class ProvisionRequest(Message):
    MSG: ClassVar[str] = "provision"
    SPEC: ClassVar[Mapping[str, F]] = {"sealed": F((bytes,), min_len=32, max_len=64 * 1024)}
    sealed: bytes


@dataclass
class ProvisionResponse(Message):
    MSG: ClassVar[str] = "provision_response"
    SPEC: ClassVar[Mapping[str, F]] = {
        "endpoint": F((str,), max_len=512),
        "server_cert": F((bytes,), max_len=16 * 1024),
    }
    endpoint: str
    server_cert: bytes


@dataclass
class Sealed(Message):
    """Plaintext of the sealed provisioning message (only the Keep ever sees it)."""

    MSG: ClassVar[str] = "sealed_provision"
    SPEC: ClassVar[Mapping[str, F]] = {
        "tls_key": F((bytes,), max_len=8192),
        "client_cert": F((bytes,), max_len=16 * 1024),
    }
    tls_key: bytes
    client_cert: bytes


@dataclass
class ErrorBody(Message):
    MSG: ClassVar[str] = "error"
    SPEC: ClassVar[Mapping[str, F]] = {
        "status": F((int,), max_len=999),
        "reason": F((str,), max_len=MAX_TEXT),
    }
    status: int
    reason: str

    @classmethod
    def of(cls, status: int, reason: str) -> "ErrorBody":
        """An error this side answers with: the reason cut to the field's limit, so answering
        an error can never itself fail (the last line of defence behind :func:`shown`)."""
        if len(reason) > MAX_TEXT:
            reason = reason[:MAX_TEXT - 40] + f"… (cut from {len(reason)} characters)"
        return cls(status=status if 100 <= status <= 599 else 500, reason=reason)


# --------------------------------------------------------------------------- keepmgr <-> keepldr <-> wasmldr


@dataclass
class Start(Message):
    """keepmgr → keepldr → wasmldr: boot the Keep with this configuration."""

    MSG: ClassVar[str] = "start"
    SPEC: ClassVar[Mapping[str, F]] = {"config": F((bytes,), max_len=512 * 1024),
                                       "keep_id": F((str,), max_len=64)}
    config: bytes
    keep_id: str


@dataclass
class Lifecycle(Message):
    """A lifecycle event: the only thing the host may learn about a Keep outside debug."""

    MSG: ClassVar[str] = "lifecycle"
    SPEC: ClassVar[Mapping[str, F]] = {
        "event": F((str,), max_len=64),
        "detail": F((str,), required=False, max_len=MAX_TEXT),
    }
    event: str
    detail: str | None = None


@dataclass
class DebugLog(Message):
    """Detail the Keep chose to tell the host.  Only ever sent in the ``debug`` profile."""

    MSG: ClassVar[str] = "debug_log"
    SPEC: ClassVar[Mapping[str, F]] = {"text": F((str,), max_len=MAX_TEXT)}
    text: str


# --------------------------------------------------------------------------- attested channel


CELL_KINDS = ("wasm", "python")


MAX_WASI_ITEMS = 1024  # arguments, or environment variables, of one WASI program
MAX_WASI_TEXT = 64 * 1024  # characters of one argument, name or value
MAX_STDIN_BYTES = 16 * 1024 * 1024


@dataclass
class RunRequest(Message):
    MSG: ClassVar[str] = "run"
    MAX_BYTES: ClassVar[int] = MAX_MESSAGE_BYTES
    SPEC: ClassVar[Mapping[str, F]] = {
        "cell_id": F((str,), max_len=128, min_len=1),
        "kind": F((str,), choices=CELL_KINDS),
        "module": F((bytes,), required=False, max_len=MAX_MESSAGE_BYTES - 4096),
        "code": F((str,), required=False, max_len=16 * 1024 * 1024),
        "invoke": F((str,), required=False, max_len=256),
        "args": F((list,), required=False, max_len=64),
        "timeout_s": F((int, float), required=False),
        "fuel": F((int,), required=False, max_len=2**63 - 1),
        # a WASI program's command line after its name, environment and standard input
        "argv": F((list,), required=False, max_len=MAX_WASI_ITEMS),
        "env": F((list,), required=False, max_len=MAX_WASI_ITEMS),
        "stdin": F((bytes,), required=False, max_len=MAX_STDIN_BYTES),
    }
    cell_id: str
    kind: str
    module: bytes | None = None
    code: str | None = None
    invoke: str | None = None
    args: list | None = None
    timeout_s: float | None = None
    fuel: int | None = None
    argv: list | None = None
    env: list | None = None
    stdin: bytes | None = None

    def _check(self) -> None:
        if self.kind == "wasm" and self.module is None:
            raise ProtocolError("run: a wasm cell needs 'module'")
        if self.kind == "python" and self.code is None:
            raise ProtocolError("run: a python cell needs 'code'")
        for i, a in enumerate(self.args or []):
            if isinstance(a, bool) or not isinstance(a, (int, float)):
                raise ProtocolError(f"run.args[{i}]: expected a number, got {type(a).__name__}")
        if self.timeout_s is not None and not 0 < float(self.timeout_s) <= 7 * 24 * 3600:
            raise ProtocolError("run.timeout_s must be between 0 and one week")
        if self.kind != "wasm" and (self.argv or self.env or self.stdin):
            raise ProtocolError("run: argv, env and stdin are for wasm cells only")
        for i, a in enumerate(self.argv or []):
            if not isinstance(a, str) or len(a) > MAX_WASI_TEXT or "\0" in a:
                raise ProtocolError(f"run.argv[{i}]: expected text without NUL, at most "
                                    f"{MAX_WASI_TEXT} characters")
        for i, pair in enumerate(self.env or []):
            if not (isinstance(pair, list) and len(pair) == 2 and all(
                    isinstance(x, str) and len(x) <= MAX_WASI_TEXT and "\0" not in x for x in pair)
                    and pair[0] and "=" not in pair[0]):
                raise ProtocolError(f"run.env[{i}]: expected [NAME, VALUE] (text, NAME not empty "
                                    f"and without '=', no NUL)")


@dataclass
class Request(Message):
    """A small request on the attested channel (interrupt, status, complete, inspect, ...)."""

    MSG: ClassVar[str] = "request"
    SPEC: ClassVar[Mapping[str, F]] = {
        "op": F((str,), max_len=64),
        "args": F((dict,), required=False),
    }
    op: str
    args: dict | None = None


EVENT_KINDS = ("stream", "display_data", "execute_result", "error", "notice", "status", "heartbeat",
               # IPython's display machinery in the Keep: update_display(), clear_output(), and
               # the pager's "page" payload (obj?), as ipykernel sends them
               "update_display_data", "clear_output", "page")
#: While a cell runs, the Keep sends a ``heartbeat`` event whenever it has been silent this long,
#: so a client can tell a busy Keep from one that stopped answering.
HEARTBEAT_S = 0.5


@dataclass
class Event(Message):
    """One output event from a running cell, already filtered by the Keep's policy.

    ``kind`` is a Jupyter IOPub message type, or ``notice`` (a kernel-visible remark such as
    "output truncated"), ``heartbeat`` (empty; the Keep is alive), or ``status`` (the last event
    of a cell, with ``ok``)."""

    MSG: ClassVar[str] = "event"
    MAX_BYTES: ClassVar[int] = MAX_MESSAGE_BYTES
    SPEC: ClassVar[Mapping[str, F]] = {
        "kind": F((str,), choices=EVENT_KINDS),
        "content": F((dict,)),
    }
    kind: str
    content: dict


@dataclass
class AuditRequest(Message):
    """Ask for one page of the audit log (``POST {endpoint}/v1/audit``), from entry ``start``.
    An empty body asks for the first page."""

    MSG: ClassVar[str] = "audit_request"
    SPEC: ClassVar[Mapping[str, F]] = {"start": F((int,), max_len=2**32),
                                       "max_bytes": F((int,), required=False, max_len=2**32)}
    start: int = 0
    #: a smaller page than the Keep's own (audit_format.PAGE_BYTES), if the reader wants one
    max_bytes: int | None = None


@dataclass
class AuditExport(Message):
    """One page of the Keep's audit log: entries from ``start`` as a CBOR sequence, the signed
    head of the whole log, its signature.  Verified by ``keep/shared/audit_format.py``."""

    MSG: ClassVar[str] = "audit_export"
    MAX_BYTES: ClassVar[int] = MAX_MESSAGE_BYTES
    SPEC: ClassVar[Mapping[str, F]] = {
        "entries": F((bytes,), max_len=MAX_MESSAGE_BYTES - 65536),
        "head": F((dict,)),
        "signature": F((bytes,), max_len=256),
        "start": F((int,), required=False, max_len=2**32),
    }
    entries: bytes
    head: dict
    signature: bytes
    start: int | None = None


@dataclass
class Reply(Message):
    """Answer to a :class:`Request`."""

    MSG: ClassVar[str] = "reply"
    SPEC: ClassVar[Mapping[str, F]] = {"ok": F((bool,)), "content": F((dict,))}
    ok: bool
    content: dict


# --------------------------------------------------------------------------- the owner channel

#: the largest sealed owner request (decisions and their reasons are short)
MAX_OWNER_REQUEST_BYTES = 16 * 1024


@dataclass
class OwnerRequest(Message):
    """A data owner's review request (list, show, decide), signed with their owner key and
    sealed to the Keep's attested dataset key (:mod:`keepbook.keep.shared.owner_channel`);
    client → keepmgr (``POST /v1/keeps/{id}/owner``) → keepldr → the Keep, who alone opens it."""

    MSG: ClassVar[str] = "owner_request"
    SPEC: ClassVar[Mapping[str, F]] = {
        "suite": F((str,), max_len=64, min_len=1),
        "sealed": F((bytes,), min_len=32, max_len=MAX_OWNER_REQUEST_BYTES),
    }
    suite: str
    sealed: bytes


@dataclass
class OwnerReply(Message):
    """The Keep's answer, signed with its audit key and sealed to the request's one-use key."""

    MSG: ClassVar[str] = "owner_reply"
    SPEC: ClassVar[Mapping[str, F]] = {"sealed": F((bytes,), min_len=32,
                                                   max_len=MAX_CONTROL_BYTES - 4096)}
    sealed: bytes


# --------------------------------------------------------------------------- framing


FRAME_HEADER = struct.Struct(">I")


def frame(body: bytes) -> bytes:
    """A frame: the body's length (4 bytes, big-endian), then the body."""
    return FRAME_HEADER.pack(len(body)) + body


def encode_frame(message: Message) -> bytes:
    return frame(message.to_cbor())


def encode_item_frame(item: Any) -> bytes:
    """A frame of any plain CBOR item (the Keep's private pipe to its fast-tier worker)."""
    _check_plain(item)
    return frame(dumps(item))


class FrameDecoder:
    """The one decoder of framed pipes (keepmgr ↔ keepldr ↔ wasmldr, the Keep ↔ its worker):
    feed bytes as they come, take out whole frames.  An oversized frame is refused at its
    header, before its body is buffered.  :meth:`messages` decodes protocol messages,
    :meth:`items` plain CBOR items; both strictly (:class:`RemoteProtocolError`)."""

    def __init__(self, max_frame: int = MAX_MESSAGE_BYTES):
        self._buf = bytearray()
        self._max = max_frame

    def feed(self, data: bytes) -> None:
        self._buf += data

    def bodies(self) -> Iterator[bytes]:
        while len(self._buf) >= FRAME_HEADER.size:
            (length,) = FRAME_HEADER.unpack_from(self._buf)
            if length > self._max:
                raise RemoteProtocolError(f"frame of {length} bytes exceeds the limit of "
                                          f"{self._max}", 413)
            if len(self._buf) < FRAME_HEADER.size + length:
                return
            body = bytes(self._buf[FRAME_HEADER.size:FRAME_HEADER.size + length])
            del self._buf[:FRAME_HEADER.size + length]
            yield body

    def messages(self) -> Iterator[Message]:
        for body in self.bodies():
            yield decode_any(body)

    def items(self) -> Iterator[Any]:
        for body in self.bodies():
            yield loads(body)

    def end(self) -> None:
        """The stream ended: fine between frames, a :class:`RemoteProtocolError` inside one."""
        if self._buf:
            where = "frame header" if len(self._buf) < FRAME_HEADER.size else "frame"
            raise RemoteProtocolError(f"the pipe closed in the middle of a {where}")

    @property
    def pending(self) -> int:
        return len(self._buf)


class SequenceDecoder:
    """Incremental decoder for a CBOR sequence of :class:`Event` (the cell output stream)."""

    def __init__(self, max_buffer: int = MAX_MESSAGE_BYTES):
        self._buf = bytearray()
        self._max = max_buffer

    def feed(self, data: bytes) -> None:
        self._buf += data
        if len(self._buf) > self._max:
            raise RemoteProtocolError(f"event larger than {self._max} bytes in the output stream", 413)

    def events(self) -> Iterator[Event]:
        """Every whole event buffered so far, decoded in one pass; a partial one stays."""
        stream = io.BytesIO(bytes(self._buf))
        used = 0
        try:
            while used < len(self._buf):
                try:
                    item = _decode_one(stream, " in sequence")
                except _Incomplete:
                    return
                except ProtocolError as exc:
                    raise _as(RemoteProtocolError, exc) from None
                used = stream.tell()
                yield Event.from_dict(item)  # type: ignore[misc]
        finally:
            del self._buf[:used]

    @property
    def pending(self) -> int:
        return len(self._buf)


def encode_event(kind: str, **content: Any) -> bytes:
    return Event(kind=kind, content=content).to_cbor()
