"""Sealed datasets: the one format, shared.  Written on the data owner's machine
(:mod:`keepbook.kernel.dataset_sealer`: ``keepbook seal``, ``%upload``), opened in the Keep
(:mod:`keepbook.keep.inside.dataset_opener`).  This module holds the format's constants, its
parsing and its checks — no key of anyone's.

A sealed dataset is a stream of frames, each ``type (1 byte) ‖ length (4 bytes, big-endian) ‖
body``::

    H  header   canonical CBOR {format, name, suite, recipient, sealed_key, owner_alg,
                owner_key, policy, chunk_size, created}
    C  chunk    AES-256-GCM(DEK, nonce = 0⁴ ‖ index⁸, aad = SHA-256(header) ‖ index⁸ ‖ "C")
    F  final    the last chunk, same but aad ends in "F" (possibly empty)
    S  trailer  canonical CBOR {plaintext_mac, bytes, chunks, signature}

* The data key DEK (32 random bytes) is sealed with HPKE (RFC 9180, ``keep/shared/sealing.py``; the
  X25519 suite or the ML-KEM-768+X25519 hybrid) to the Keep's long-lived *dataset key*, whose
  public half is in the Keep's attested config (``keys["dataset/<suite>"]``), with
  ``info = "keepbook/dataset/v1" ‖ SHA-256(header without sealed_key)``.
* Chunk index and the final flag are inside the AEAD's associated data: a flipped byte, a
  reordered, dropped or repeated chunk, a stream cut before ``F`` or extended after it all fail
  with a reason (the STREAM construction of Hoang, Reyhanitabar, Rogaway and Vizár).
* The owner signs (Ed25519, or ECDSA P-256 with SHA-256)
  ``"keepbook/dataset-sig/v1" ‖ SHA-256(header) ‖ MAC(plaintext) ‖ bytes⁸ ‖ chunks⁸`` —
  so name, policy, recipient and content are the owner's; the trailer comes last so sealing
  streams in one pass.
* The content digest is *keyed*: MAC = HMAC-SHA-256 under HKDF(DEK, "keepbook/dataset-digest/v1")
  (:func:`content_mac`).  The trailer travels in clear and the analyst holds the file, the
  Keep's receipt and its audit log: an unsalted SHA-256 of the plaintext there would let anyone
  confirm a guess of a small dataset.  Only the owner (who made the DEK) and the Keep know the
  key; ``keepbook seal`` prints the digest, the owner finds the same one in the audit log's
  ``dataset`` entry.  (v1 carried ``plaintext_sha256``; v1 streams are refused.)

Readers (the Keep's ``Opener``) are incremental and never hold more than one chunk; callers must not
expose any plaintext before :meth:`Opener.finish` succeeds (the Keep writes to a private staging
file and renames it into ``/data`` only then).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import struct
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from keepbook.keep.shared import protocol

FORMAT_FAMILY = "keepbook-sealed-dataset/"
FORMAT = FORMAT_FAMILY + "v2"
INFO_DOMAIN = b"keepbook/dataset/v1"
DIGEST_DOMAIN = b"keepbook/dataset-digest/v1"
SIG_DOMAIN = b"keepbook/dataset-sig/v1"
DEFAULT_CHUNK = 1024 * 1024
MAX_CHUNK = 16 * 1024 * 1024
MAX_HEADER = 512 * 1024
FRAME = struct.Struct(">cI")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
TAG = 16
#: header fields and their types (the header is canonical CBOR; nothing else is allowed in it)
HEADER_FIELDS = {"format": str, "name": str, "suite": str, "recipient": bytes, "owner_alg": str,
                 "owner_key": bytes, "policy": bytes, "chunk_size": int, "created": (int, float),
                 "sealed_key": bytes}


class DatasetError(ValueError):
    """The sealed dataset is refused; the message names the failing check."""


def dataset_key_name(suite: str) -> str:
    return f"dataset/{suite}"


#: a dataset may sit in folders under /data (``%upload DIR``): at most this many levels
MAX_NAME_PARTS = 16


def check_name(name: str) -> str:
    """A dataset's name: its path under /data, ``/``-separated parts of 1-64 letters, digits,
    '.', '_' or '-', each starting with a letter or digit (so no '..', no absolute path)."""
    parts = name.split("/") if isinstance(name, str) else []
    if not parts or len(parts) > MAX_NAME_PARTS or not all(NAME_RE.match(p) for p in parts):
        raise DatasetError(f"dataset name {name!r} is not allowed: use 1-64 letters, digits, "
                           "'.', '_' or '-', starting with a letter or digit (in folders: up to "
                           f"{MAX_NAME_PARTS} such parts joined by '/')")
    return name



def fingerprint(alg: str, public: bytes) -> str:
    return "sha256:" + hashlib.sha256(alg.encode() + b":" + public).hexdigest()


def verify_owner_signature(alg: str, public: bytes, signature: bytes, data: bytes) -> None:
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


def chunk_nonce(index: int) -> bytes:
    return b"\0\0\0\0" + struct.pack(">Q", index)


def chunk_aad(header_hash: bytes, index: int, kind: bytes) -> bytes:
    """Associated data of chunk ``index``: binds it to the header, its place and the final flag."""
    return header_hash + struct.pack(">Q", index) + kind


def frame(kind: bytes, body: bytes) -> bytes:
    return FRAME.pack(kind, len(body)) + body


def content_mac(dek: bytes) -> "hmac.HMAC":
    """The keyed digest of a dataset's plaintext (feed it with ``update``): only holders of the
    data key can compute or check it."""
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=DIGEST_DOMAIN).derive(dek)
    return hmac.new(key, digestmod=hashlib.sha256)


def digest_text(mac: "hmac.HMAC") -> str:
    """How receipts, the audit log and ``keepbook seal`` write the keyed digest."""
    return "hmac-sha256:" + mac.hexdigest()


def sig_message(header_hash: bytes, plain_hash: bytes, size: int, chunks: int) -> bytes:
    return SIG_DOMAIN + header_hash + plain_hash + struct.pack(">QQ", size, chunks)


def key_info(core: dict) -> bytes:
    """HPKE ``info`` for the data key: binds it to the header (without the sealed key)."""
    return INFO_DOMAIN + hashlib.sha256(protocol.dumps(core)).digest()


def parse_header(body: bytes) -> dict[str, Any]:
    """The header frame's body, checked field by field; :class:`DatasetError` naming the field."""
    try:
        h = protocol.loads(body, max_bytes=MAX_HEADER)
    except protocol.ProtocolError as exc:
        raise DatasetError(f"header: {exc.reason}") from None
    if isinstance(h, dict) and isinstance(h.get("format"), str) \
            and h["format"].startswith(FORMAT_FAMILY) and h["format"] != FORMAT:
        raise DatasetError(f"header: this dataset was sealed as {protocol.cut(h['format'], 60)}, "
                           f"this Keep opens {FORMAT} (v1 carried an unkeyed digest of the data): "
                           "seal it again with this keepbook")
    if not isinstance(h, dict) or h.get("format") != FORMAT:
        raise DatasetError(f"header: not a {FORMAT} stream")
    for k, t in HEADER_FIELDS.items():
        if not isinstance(h.get(k), t):
            raise DatasetError(f"header: field {k!r} is missing or of the wrong type")
    if set(h) != set(HEADER_FIELDS):
        raise DatasetError(f"header: unknown field(s) {', '.join(sorted(set(h) - set(HEADER_FIELDS)))}")
    check_name(h["name"])
    return h


def parse_trailer(body: bytes) -> dict[str, Any]:
    try:
        t = protocol.loads(body, max_bytes=MAX_HEADER)
    except protocol.ProtocolError as exc:
        raise DatasetError(f"signature trailer: {exc.reason}") from None
    if not isinstance(t, dict) or not isinstance(t.get("signature"), bytes):
        raise DatasetError("signature trailer: malformed")
    return t


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


def recipient_from_config(config: protocol.KeepConfig, suite: str) -> bytes:
    key = (config.keys or {}).get(dataset_key_name(suite))
    if not isinstance(key, bytes):
        raise DatasetError(f"the Keep's attested config has no dataset key for suite {suite!r}")
    return key
