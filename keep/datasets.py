"""Sealed datasets: one format, written by ``keepbook seal`` / ``%upload`` and opened in the Keep.

A sealed dataset is a stream of frames, each ``type (1 byte) ‖ length (4 bytes, big-endian) ‖
body``::

    H  header   canonical CBOR {format, name, suite, recipient, sealed_key, owner_alg,
                owner_key, policy, chunk_size, created}
    C  chunk    AES-256-GCM(DEK, nonce = 0⁴ ‖ index⁸, aad = SHA-256(header) ‖ index⁸ ‖ "C")
    F  final    the last chunk, same but aad ends in "F" (possibly empty)
    S  trailer  canonical CBOR {plaintext_sha256, bytes, chunks, signature}

* The data key DEK (32 random bytes) is sealed with HPKE (RFC 9180, ``keep/sealing.py``; the
  X25519 suite or the ML-KEM-768+X25519 hybrid) to the Keep's long-lived *dataset key*, whose
  public half is in the Keep's attested config (``keys["dataset/<suite>"]``), with
  ``info = "keepbook/dataset/v1" ‖ SHA-256(header without sealed_key)``.
* Chunk index and the final flag are inside the AEAD's associated data: a flipped byte, a
  reordered, dropped or repeated chunk, a stream cut before ``F`` or extended after it all fail
  with a reason (the STREAM construction of Hoang, Reyhanitabar, Rogaway and Vizár).
* The owner signs (Ed25519, or ECDSA P-256 with SHA-256)
  ``"keepbook/dataset-sig/v1" ‖ SHA-256(header) ‖ SHA-256(plaintext) ‖ bytes⁸ ‖ chunks⁸`` —
  so name, policy, recipient and content are the owner's; the trailer comes last so sealing
  streams in one pass.

Readers (:class:`Opener`) are incremental and never hold more than one chunk; callers must not
expose any plaintext before :meth:`Opener.finish` succeeds (the Keep writes to a private staging
file and renames it into ``/data`` only then).
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from keepbook.keep import protocol, sealing

FORMAT = "keepbook-sealed-dataset/v1"
INFO_DOMAIN = b"keepbook/dataset/v1"
SIG_DOMAIN = b"keepbook/dataset-sig/v1"
DEFAULT_CHUNK = 1024 * 1024
MAX_CHUNK = 16 * 1024 * 1024
MAX_HEADER = 512 * 1024
FRAME = struct.Struct(">cI")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
TAG = 16


class DatasetError(ValueError):
    """The sealed dataset is refused; the message names the failing check."""


def dataset_key_name(suite: str) -> str:
    return f"dataset/{suite}"


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise DatasetError(f"dataset name {name!r} is not allowed: use 1-64 letters, digits, "
                           "'.', '_' or '-', starting with a letter or digit")
    return name


# ---------------------------------------------------------------------- owner keys


def owner_public(key: Any) -> tuple[str, bytes]:
    """(algorithm, public key bytes) of an owner's private key."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "ed25519", key.public_key().public_bytes_raw()
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
        return "ecdsa-p256", key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    raise DatasetError("the owner key must be Ed25519 or ECDSA P-256")


def fingerprint(alg: str, public: bytes) -> str:
    return "sha256:" + hashlib.sha256(alg.encode() + b":" + public).hexdigest()


def _sign(key: Any, data: bytes) -> bytes:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(data)
    return key.sign(data, ec.ECDSA(hashes.SHA256()))


def _verify(alg: str, public: bytes, signature: bytes, data: bytes) -> None:
    try:
        if alg == "ed25519":
            ed25519.Ed25519PublicKey.from_public_bytes(public).verify(signature, data)
        elif alg == "ecdsa-p256":
            ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), public).verify(
                signature, data, ec.ECDSA(hashes.SHA256()))
        else:
            raise DatasetError(f"owner signature: unknown algorithm {alg!r}")
    except (InvalidSignature, ValueError):
        raise DatasetError("owner signature: does not verify with the owner key in the header — "
                           "the dataset was altered after the owner signed it, or signed by "
                           "someone else") from None


def load_owner_key(pem: bytes) -> Any:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise DatasetError(f"not an unencrypted PEM private key: {exc}") from None
    owner_public(key)  # checks the type
    return key


def new_owner_key_pem() -> bytes:
    return ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())


# ---------------------------------------------------------------------- sealing


def _nonce(index: int) -> bytes:
    return b"\0\0\0\0" + struct.pack(">Q", index)


def _frame(kind: bytes, body: bytes) -> bytes:
    return FRAME.pack(kind, len(body)) + body


def _sig_message(header_hash: bytes, plain_hash: bytes, size: int, chunks: int) -> bytes:
    return SIG_DOMAIN + header_hash + plain_hash + struct.pack(">QQ", size, chunks)


class Sealer:
    """One sealed stream, frame by frame.  :meth:`seal_into` writes a chunk's frame into a
    caller-owned buffer, so an uploader can reuse a few buffers instead of allocating (and
    page-faulting) fresh ones per chunk; :func:`seal_stream` is the simple generator on top."""

    def __init__(self, *, name: str, recipient: bytes, suite: str, owner_key: Any,
                 policy: bytes = b"", chunk_size: int = DEFAULT_CHUNK):
        check_name(name)
        if not 1024 <= chunk_size <= MAX_CHUNK:
            raise DatasetError(f"chunk size must be between 1 KiB and {MAX_CHUNK} bytes")
        alg, pub = owner_public(owner_key)
        core = {"format": FORMAT, "name": name, "suite": suite, "recipient": recipient,
                "owner_alg": alg, "owner_key": pub, "policy": bytes(policy),
                "chunk_size": chunk_size, "created": round(time.time(), 3)}
        dek = AESGCM.generate_key(256)
        core_hash = hashlib.sha256(protocol.dumps(core)).digest()
        try:
            sealed_key = sealing.seal(suite, recipient, dek, INFO_DOMAIN + core_hash)
        except sealing.SealingError as exc:
            raise DatasetError(str(exc)) from None
        header = protocol.dumps({**core, "sealed_key": sealed_key})
        self.header_frame = _frame(b"H", header)
        self.chunk_size = chunk_size
        self._owner_key = owner_key
        self._header_hash = hashlib.sha256(header).digest()
        self._aead = AESGCM(dek)
        self._plain = hashlib.sha256()
        self._size = self._index = 0
        self._final = False

    @staticmethod
    def frame_size(plain_len: int) -> int:
        return FRAME.size + plain_len + TAG

    def seal_into(self, chunk: Any, final: bool, out: Any) -> int:
        """Write the frame of the next chunk (``final``: the last one) into ``out`` (a writable
        buffer of at least :meth:`frame_size` bytes); return the frame's length."""
        if self._final:
            raise DatasetError("stream: a chunk after the final chunk")
        n = len(chunk)
        if n > self.chunk_size:
            raise DatasetError(f"chunk of {n} bytes exceeds the chunk size {self.chunk_size}")
        kind = b"F" if final else b"C"
        self._plain.update(chunk)
        self._size += n
        end = FRAME.size + n + TAG
        view = memoryview(out)
        FRAME.pack_into(view, 0, kind, n + TAG)
        self._aead.encrypt_into(_nonce(self._index), chunk,
                                self._header_hash + struct.pack(">Q", self._index) + kind,
                                view[FRAME.size:end])
        self._index += 1
        self._final = final
        return end

    def trailer_frame(self) -> bytes:
        """The owner's signature over header, plaintext digest, size and chunk count."""
        if not self._final:
            raise DatasetError("stream: the trailer before the final chunk")
        digest = self._plain.digest()
        sig = _sign(self._owner_key, _sig_message(self._header_hash, digest, self._size, self._index))
        return _frame(b"S", protocol.dumps({"plaintext_sha256": digest, "bytes": self._size,
                                           "chunks": self._index, "signature": sig}))


def seal_stream(src: BinaryIO, *, name: str, recipient: bytes, suite: str, owner_key: Any,
                policy: bytes = b"", chunk_size: int = DEFAULT_CHUNK) -> Iterator[bytes]:
    """Yield the sealed dataset frame by frame; reads ``src`` one chunk at a time."""
    sealer = Sealer(name=name, recipient=recipient, suite=suite, owner_key=owner_key,
                    policy=policy, chunk_size=chunk_size)
    yield sealer.header_frame
    chunk = src.read(chunk_size)
    while True:
        nxt = src.read(chunk_size) if len(chunk) == chunk_size else b""
        out = bytearray(Sealer.frame_size(len(chunk)))
        sealer.seal_into(chunk, not nxt, out)
        yield bytes(out)
        if not nxt:
            break
        chunk = nxt
    yield sealer.trailer_frame()


# ---------------------------------------------------------------------- opening


@dataclass
class DatasetInfo:
    name: str
    suite: str
    owner_alg: str
    owner_key: bytes
    policy: bytes
    bytes: int = 0
    chunks: int = 0
    digest: str = ""

    @property
    def owner(self) -> str:
        return fingerprint(self.owner_alg, self.owner_key)


class Opener:
    """Incremental reader.  ``keys`` maps suite → (private key, public key bytes) of the Keep.
    :meth:`feed` returns plaintext pieces (keep them private until :meth:`finish`)."""

    def __init__(self, keys: dict[str, tuple[Any, bytes]], max_bytes: int = 1 << 40):
        self.keys = keys
        self.max_bytes = max_bytes
        self.info: DatasetInfo | None = None
        self.header_hash = b""
        self.aead: AESGCM | None = None
        self.index = 0
        self.size = 0
        self.plain = hashlib.sha256()
        self.final = False
        self.trailer: dict | None = None
        # the frame being read: its 5 header bytes, then its body (a reused buffer)
        self._head = bytearray()
        self._kind = b""
        self._want = -1          # body length of the current frame; -1 = reading its header
        self._fill = 0
        self._body = bytearray()
        self._out = bytearray()  # reused plaintext buffer (the sink path)

    def feed(self, data: Any, sink: Callable[[memoryview], None] | None = None) -> list[bytes]:
        """Take the next bytes of the stream.  Without ``sink``, return the plaintext pieces of
        the chunks completed; with ``sink``, hand each to ``sink`` as a view that is valid only
        during the call (no copies: a frame that arrives whole is opened in place) and return
        []."""
        out: list[bytes] = []
        mv = memoryview(data).cast("B")
        pos, end = 0, len(mv)
        while pos < end:
            if self._want < 0:
                take = min(FRAME.size - len(self._head), end - pos)
                self._head += mv[pos:pos + take]
                pos += take
                if len(self._head) < FRAME.size:
                    break
                kind, length = FRAME.unpack(self._head)
                limit = MAX_HEADER if kind in (b"H", b"S") else MAX_CHUNK + TAG
                if length > limit:
                    raise DatasetError(f"frame {self.index}: {length} bytes exceeds the limit of {limit}")
                self._kind, self._want, self._fill = kind, length, 0
                if end - pos >= length:       # the whole body is here: no copy
                    body = mv[pos:pos + length]
                    pos += length
                    self._done(body, sink, out)
                    continue
                if len(self._body) < length:
                    self._body = bytearray(length)
            take = min(self._want - self._fill, end - pos)
            self._body[self._fill:self._fill + take] = mv[pos:pos + take]
            self._fill += take
            pos += take
            if self._fill == self._want:
                self._done(memoryview(self._body)[:self._want], sink, out)
        return out

    def _done(self, body: memoryview, sink: Callable[[memoryview], None] | None,
              out: list[bytes]) -> None:
        kind = self._kind
        self._head.clear()
        self._want = -1
        if sink is None:
            piece = self._frame(kind, body, None)
            if piece:
                out.append(bytes(piece))
        else:
            if len(self._out) < len(body):
                self._out = bytearray(len(body))
            piece = self._frame(kind, body, memoryview(self._out))
            if piece:
                sink(piece)

    def _frame(self, kind: bytes, body: memoryview, into: memoryview | None) -> Any:
        if self.trailer is not None:
            raise DatasetError("stream: data after the owner's signature — the stream was extended")
        if self.info is None:
            if kind != b"H":
                raise DatasetError("stream: does not start with a sealed-dataset header")
            self._header(bytes(body))
            return None
        if kind == b"S":
            if not self.final:
                raise DatasetError(f"stream: truncated — the signature came after chunk "
                                   f"{self.index - 1} but before the final chunk")
            self._trailer(bytes(body))
            return None
        if kind not in (b"C", b"F"):
            raise DatasetError(f"stream: unknown frame type {kind!r}")
        if self.final:
            raise DatasetError("stream: a chunk after the final chunk — the stream was extended "
                               "or reordered")
        assert self.aead is not None
        nonce, aad = _nonce(self.index), self.header_hash + struct.pack(">Q", self.index) + kind
        try:
            if len(body) < TAG:
                raise InvalidTag()
            if into is None:
                plain: Any = self.aead.decrypt(nonce, body, aad)
            else:
                plain = into[:len(body) - TAG]
                self.aead.decrypt_into(nonce, body, aad, plain)
        except InvalidTag:
            raise DatasetError(f"chunk {self.index}: authentication failed — the chunk was altered, "
                               "reordered, dropped, or its final flag changed") from None
        self.index += 1
        self.size += len(plain)
        if self.size > self.max_bytes:
            raise DatasetError(f"dataset larger than the limit of {self.max_bytes} bytes")
        self.plain.update(plain)
        self.final = kind == b"F"
        return plain

    def _header(self, body: bytes) -> None:
        try:
            h = protocol.loads(body, max_bytes=MAX_HEADER)
        except protocol.ProtocolError as exc:
            raise DatasetError(f"header: {exc.reason}") from None
        types = {"format": str, "name": str, "suite": str, "recipient": bytes, "owner_alg": str,
                 "owner_key": bytes, "policy": bytes, "chunk_size": int, "created": (int, float),
                 "sealed_key": bytes}
        if not isinstance(h, dict) or h.get("format") != FORMAT:
            raise DatasetError(f"header: not a {FORMAT} stream")
        for k, t in types.items():
            if not isinstance(h.get(k), t):
                raise DatasetError(f"header: field {k!r} is missing or of the wrong type")
        if set(h) != set(types):
            raise DatasetError(f"header: unknown field(s) {', '.join(sorted(set(h) - set(types)))}")
        check_name(h["name"])
        if h["suite"] not in self.keys:
            raise DatasetError(f"header: suite {h['suite']!r} — this Keep has dataset keys for "
                               f"{', '.join(self.keys)}")
        priv, pub = self.keys[h["suite"]]
        if h["recipient"] != pub:
            raise DatasetError("wrong key: the dataset was sealed to another Keep's dataset key "
                               "(seal it again to this Keep's attested key)")
        core = {k: v for k, v in h.items() if k != "sealed_key"}
        try:
            dek = sealing.open_sealed(h["suite"], priv, h["sealed_key"],
                                      INFO_DOMAIN + hashlib.sha256(protocol.dumps(core)).digest())
        except sealing.SealingError:
            raise DatasetError("wrong key: the data key does not open with this Keep's dataset "
                               "key, or the header was altered") from None
        if len(dek) != 32:
            raise DatasetError("header: the sealed data key has the wrong length")
        self.header_hash = hashlib.sha256(body).digest()
        self.aead = AESGCM(dek)
        self.info = DatasetInfo(name=h["name"], suite=h["suite"], owner_alg=h["owner_alg"],
                                owner_key=h["owner_key"], policy=h["policy"])

    def _trailer(self, body: bytes) -> None:
        try:
            t = protocol.loads(body, max_bytes=MAX_HEADER)
        except protocol.ProtocolError as exc:
            raise DatasetError(f"signature trailer: {exc.reason}") from None
        if not isinstance(t, dict) or not isinstance(t.get("signature"), bytes):
            raise DatasetError("signature trailer: malformed")
        digest = self.plain.digest()
        if t.get("plaintext_sha256") != digest or t.get("bytes") != self.size \
                or t.get("chunks") != self.index:
            raise DatasetError("signature trailer: does not describe the chunks received")
        assert self.info is not None
        _verify(self.info.owner_alg, self.info.owner_key, t["signature"],
                _sig_message(self.header_hash, digest, self.size, self.index))
        self.trailer = t

    def finish(self) -> DatasetInfo:
        """All checks passed?  Raises :class:`DatasetError` naming what is missing."""
        if self.info is None:
            raise DatasetError("stream: empty or cut inside the header")
        if self._head:
            raise DatasetError("stream: truncated in the middle of a frame")
        if not self.final:
            raise DatasetError(f"stream: truncated after chunk {self.index - 1} — the final "
                               "chunk never arrived")
        if self.trailer is None:
            raise DatasetError("stream: truncated — the owner's signature never arrived")
        self.info.bytes, self.info.chunks = self.size, self.index
        self.info.digest = "sha256:" + self.plain.hexdigest()
        return self.info


def open_stream(chunks: Any, keys: dict[str, tuple[Any, bytes]]) -> tuple[DatasetInfo, bytes]:
    """Whole-buffer convenience (tests, small data): (info, plaintext)."""
    op = Opener(keys)
    parts = []
    for c in chunks:
        parts.extend(op.feed(c))
    info = op.finish()
    return info, b"".join(parts)


def keep_dataset_keys(suites: tuple[str, ...] = tuple(sealing.SUITES)) -> dict[str, tuple[Any, bytes]]:
    """A Keep's long-lived dataset keys, one per HPKE suite (made at start, in the Keep)."""
    return {s: sealing.generate(s) for s in suites}


def recipient_from_config(config: protocol.KeepConfig, suite: str) -> bytes:
    key = (config.keys or {}).get(dataset_key_name(suite))
    if not isinstance(key, bytes):
        raise DatasetError(f"the Keep's attested config has no dataset key for suite {suite!r}")
    return key


# ---------------------------------------------------------------------- files and seal specs


def is_sealed_file(path: str | os.PathLike) -> bool:
    """Does this file start like a sealed dataset?"""
    with open(path, "rb") as fh:
        head = fh.read(FRAME.size + 4096)
    return len(head) > FRAME.size and head[:1] == b"H" and FORMAT.encode() in head


def read_chunks(path: str | os.PathLike, size: int = DEFAULT_CHUNK) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        while True:
            piece = fh.read(size)
            if not piece:
                return
            yield piece


def default_owner_key_path() -> Path:
    env = os.environ.get("KEEPBOOK_OWNER_KEY")
    if env:
        return Path(env).expanduser()
    base = Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config"))
    return base / "keepbook" / "owner-key.pem"


def load_or_create_owner_key(path: str | os.PathLike | None = None) -> tuple[Any, Path, bool]:
    """The data owner's signing key: (key, path, created?).  Made (Ed25519, mode 0600) on
    first use, like an SSH key."""
    p = Path(path).expanduser() if path else default_owner_key_path()
    created = False
    if not p.exists():
        if path:  # an explicit path must exist
            raise DatasetError(f"owner key {p} does not exist")
        p.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(new_owner_key_pem())
        created = True
    try:
        return load_owner_key(p.read_bytes()), p, created
    except OSError as exc:
        raise DatasetError(f"cannot read owner key {p}: {exc.strerror}") from None


@dataclass
class SealSpec:
    """A seal spec (TOML): what `keepbook seal` takes as flags, as a file, for `%upload`::

        data = "patients.csv"           # relative to the spec file
        policy = "policy.toml"          # the owner's output policy (optional)
        owner_key = "owner-key.pem"     # optional; default: the owner key of this user
        suite = "mlkem768x25519-hkdfsha256-aes128gcm"   # optional
        name = "patients.csv"           # optional; default: the data file's name
    """

    data: Path
    policy: bytes
    owner_key: Path | None
    suite: str
    name: str


def parse_spec(path: str | os.PathLike) -> SealSpec:
    import tomllib

    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise DatasetError(f"seal spec {p}: {exc}") from None
    unknown = set(raw) - {"data", "policy", "owner_key", "suite", "name"}
    if unknown:
        raise DatasetError(f"seal spec {p}: unknown key(s) {', '.join(sorted(unknown))}")
    if not isinstance(raw.get("data"), str):
        raise DatasetError(f"seal spec {p}: 'data' (the file to seal) is required")
    base = p.parent
    data = base / raw["data"]
    policy = b""
    if raw.get("policy"):
        try:
            policy = (base / raw["policy"]).read_bytes()
        except OSError as exc:
            raise DatasetError(f"seal spec {p}: cannot read policy: {exc.strerror}") from None
    suite = raw.get("suite", sealing.DEFAULT_SUITE)
    if suite not in sealing.SUITES:
        raise DatasetError(f"seal spec {p}: unknown suite {suite!r}; known: {', '.join(sealing.SUITES)}")
    return SealSpec(data=data, policy=policy,
                    owner_key=base / raw["owner_key"] if raw.get("owner_key") else None,
                    suite=suite, name=check_name(raw.get("name") or data.name))
