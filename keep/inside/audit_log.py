"""The Keep's audit log, inside the Keep: append-only, hash-chained, its head signed with the
audit key made in this Keep (whose public half is in the attested config).  The format and its
verification are :mod:`keepbook.keep.shared.audit_format`."""

from __future__ import annotations

import hashlib
import threading
import time

from cryptography.hazmat.primitives.asymmetric import ed25519

from keepbook.keep.shared import protocol
from keepbook.keep.shared.audit_format import ENTRY_DOMAIN, HEAD_DOMAIN, genesis


class AuditLog:
    """Inside the Keep: append-only, thread-safe (cells append from worker threads)."""

    def __init__(self, keep_id: str, config_digest: bytes, key: ed25519.Ed25519PrivateKey | None = None):
        self.keep_id = keep_id
        self.config_digest = config_digest
        self.key = key or ed25519.Ed25519PrivateKey.generate()
        self.public_key = self.key.public_key().public_bytes_raw()
        self._entries: list[bytes] = []
        self._last = genesis(config_digest)
        self._lock = threading.Lock()

    def append(self, kind: str, data: dict) -> None:
        with self._lock:
            entry = {"seq": len(self._entries), "t": round(time.time(), 3), "kind": kind,
                     "data": dict(data), "prev": self._last}
            raw = protocol.dumps(entry)
            self._entries.append(raw)
            self._last = hashlib.sha256(ENTRY_DOMAIN + raw).digest()

    def export(self) -> dict:
        """Entries (a CBOR sequence), the signed head and its signature."""
        with self._lock:
            entries = b"".join(self._entries)
            head = {"keep_id": self.keep_id, "config_digest": self.config_digest,
                    "count": len(self._entries), "head": self._last, "t": round(time.time(), 3)}
        signature = self.key.sign(HEAD_DOMAIN + protocol.dumps(head))
        return {"entries": entries, "head": head, "signature": signature}
