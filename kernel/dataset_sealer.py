"""Sealing a dataset on the data owner's machine: the owner's signing key, the sealer that
writes the format of :mod:`keepbook.keep.shared.dataset_format` (HPKE to the Keep's attested
dataset key, AES-256-GCM chunks, the owner's signature), and seal specs.  The user's machine —
it holds the owner's private key and the plaintext."""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from keepbook.keep.shared import protocol, sealing
from keepbook.keep.shared.dataset_format import (DEFAULT_CHUNK, FORMAT, FORMAT_FAMILY, FRAME, MAX_CHUNK, TAG, DatasetError,
                                                check_name, chunk_aad, chunk_nonce, content_mac,
                                                digest_text, frame, key_info, sig_message)


# ---------------------------------------------------------------------- owner keys


def owner_public(key: Any) -> tuple[str, bytes]:
    """(algorithm, public key bytes) of an owner's private key."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "ed25519", key.public_key().public_bytes_raw()
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
        return "ecdsa-p256", key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    raise DatasetError("the owner key must be Ed25519 or ECDSA P-256")


def sign(key: Any, data: bytes) -> bytes:
    """The owner's signature (Ed25519, or ECDSA P-256 with SHA-256) over ``data``."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(data)
    return key.sign(data, ec.ECDSA(hashes.SHA256()))


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
        try:
            sealed_key = sealing.seal(suite, recipient, dek, key_info(core))
        except sealing.SealingError as exc:
            raise DatasetError(str(exc)) from None
        header = protocol.dumps({**core, "sealed_key": sealed_key})
        self.header_frame = frame(b"H", header)
        self.chunk_size = chunk_size
        self._owner_key = owner_key
        self._header_hash = hashlib.sha256(header).digest()
        self._aead = AESGCM(dek)
        self._plain = content_mac(dek)
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
        self._aead.encrypt_into(chunk_nonce(self._index), chunk,
                                chunk_aad(self._header_hash, self._index, kind),
                                view[FRAME.size:end])
        self._index += 1
        self._final = final
        return end

    @property
    def digest(self) -> str:
        """The keyed content digest (complete once the final chunk is sealed): the owner finds
        the same text in the Keep's audit log when it opened this dataset."""
        return digest_text(self._plain)

    def trailer_frame(self) -> bytes:
        """The owner's signature over header, plaintext digest, size and chunk count."""
        if not self._final:
            raise DatasetError("stream: the trailer before the final chunk")
        digest = self._plain.digest()
        sig = sign(self._owner_key, sig_message(self._header_hash, digest, self._size, self._index))
        return frame(b"S", protocol.dumps({"plaintext_mac": digest, "bytes": self._size,
                                           "chunks": self._index, "signature": sig}))


def seal_stream(src: BinaryIO, *, name: str, recipient: bytes, suite: str, owner_key: Any,
                policy: bytes = b"", chunk_size: int = DEFAULT_CHUNK,
                digest: Callable[[str], None] | None = None) -> Iterator[bytes]:
    """Yield the sealed dataset frame by frame; reads ``src`` one chunk at a time.  At the end,
    ``digest(text)`` gets the keyed content digest."""
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
    if digest is not None:
        digest(sealer.digest)


# ---------------------------------------------------------------------- files and seal specs


def is_sealed_file(path: str | os.PathLike) -> bool:
    """Does this file start like a sealed dataset?"""
    with open(path, "rb") as fh:
        head = fh.read(FRAME.size + 4096)
    return len(head) > FRAME.size and head[:1] == b"H" and FORMAT_FAMILY.encode() in head


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
    from keepbook.kernel.trust_policy import user_config_dir

    return user_config_dir() / "owner-key.pem"


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
