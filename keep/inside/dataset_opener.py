"""Opening a sealed dataset inside the Keep: the Keep's dataset keys and the incremental
reader.  Inside the Keep — it holds the dataset keys' private halves and sees plaintext.  The
format is :mod:`keepbook.keep.shared.dataset_format`; callers must not expose any plaintext
before :meth:`Opener.finish` succeeds (the Keep writes to a private staging file and renames it
into ``/data`` only then)."""

from __future__ import annotations

import hashlib
from typing import Any, Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from keepbook.keep.shared import sealing
from keepbook.keep.shared.dataset_format import (FRAME, MAX_CHUNK, MAX_HEADER, TAG, DatasetError, DatasetInfo,
                                                chunk_aad, chunk_nonce, content_mac, digest_text, key_info,
                                                parse_header, parse_trailer, sig_message,
                                                verify_owner_signature)


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
        self.plain: Any = None  # the keyed digest, once the data key is open (content_mac)
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
        nonce, aad = chunk_nonce(self.index), chunk_aad(self.header_hash, self.index, kind)
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
        h = parse_header(body)
        if h["suite"] not in self.keys:
            raise DatasetError(f"header: suite {h['suite']!r} — this Keep has dataset keys for "
                               f"{', '.join(self.keys)}")
        priv, pub = self.keys[h["suite"]]
        if h["recipient"] != pub:
            raise DatasetError("wrong key: the dataset was sealed to another Keep's dataset key "
                               "(seal it again to this Keep's attested key)")
        core = {k: v for k, v in h.items() if k != "sealed_key"}
        try:
            dek = sealing.open_sealed(h["suite"], priv, h["sealed_key"], key_info(core))
        except sealing.SealingError:
            raise DatasetError("wrong key: the data key does not open with this Keep's dataset "
                               "key, or the header was altered") from None
        if len(dek) != 32:
            raise DatasetError("header: the sealed data key has the wrong length")
        self.header_hash = hashlib.sha256(body).digest()
        self.aead = AESGCM(dek)
        self.plain = content_mac(dek)
        self.info = DatasetInfo(name=h["name"], suite=h["suite"], owner_alg=h["owner_alg"],
                                owner_key=h["owner_key"], policy=h["policy"])

    def _trailer(self, body: bytes) -> None:
        t = parse_trailer(body)
        digest = self.plain.digest()
        if t.get("plaintext_mac") != digest or t.get("bytes") != self.size \
                or t.get("chunks") != self.index:
            raise DatasetError("signature trailer: does not describe the chunks received")
        assert self.info is not None
        verify_owner_signature(self.info.owner_alg, self.info.owner_key, t["signature"],
                sig_message(self.header_hash, digest, self.size, self.index))
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
        self.info.digest = digest_text(self.plain)
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
