"""The Keep's audit log, inside the Keep: append-only, hash-chained, its head signed with the
audit key made in this Keep (whose public half is in the attested config).  The format and its
verification are :mod:`keepbook.keep.shared.audit_format`.

Bounded: the log holds at most ``max_bytes`` of entries (the output gate already coalesces
refusals per rule per cell).  When the next entry would not fit, one last ``log-full`` entry
says so and every later append is refused (``append`` returns False) — the gate then releases
nothing more, the Keep runs no more cells and takes no more datasets: nothing happens that the
log cannot record.  The log is exported in pages (:meth:`AuditLog.export`), so it can always be
read whole, whatever its size."""

from __future__ import annotations

import hashlib
import threading
import time

from cryptography.hazmat.primitives.asymmetric import ed25519

from keepbook.keep.shared import protocol
from keepbook.keep.shared.audit_format import (ENTRY_DOMAIN, HEAD_DOMAIN, MAX_LOG_BYTES, PAGE_BYTES,
                                               genesis)

#: room kept for the closing ``log-full`` entry
_CLOSING_ROOM = 512


class AuditLog:
    """Inside the Keep: append-only, thread-safe (cells append from worker threads)."""

    def __init__(self, keep_id: str, config_digest: bytes, key: ed25519.Ed25519PrivateKey | None = None,
                 max_bytes: int = MAX_LOG_BYTES):
        self.keep_id = keep_id
        self.config_digest = config_digest
        self.key = key or ed25519.Ed25519PrivateKey.generate()
        self.public_key = self.key.public_key().public_bytes_raw()
        self.max_bytes = max_bytes
        self.size = 0
        self.full = False
        self._entries: list[bytes] = []
        self._last = genesis(config_digest)
        self._lock = threading.Lock()

    def _add(self, kind: str, data: dict) -> None:
        entry = {"seq": len(self._entries), "t": round(time.time(), 3), "kind": kind,
                 "data": dict(data), "prev": self._last}
        raw = protocol.dumps(entry)
        self._entries.append(raw)
        self.size += len(raw)
        self._last = hashlib.sha256(ENTRY_DOMAIN + raw).digest()

    def append(self, kind: str, data: dict) -> bool:
        """Record one entry; False (nothing recorded) once the log is full."""
        with self._lock:
            if self.full:
                return False
            size = len(protocol.dumps(data)) + 96  # the entry's own fields, generously
            if self.size + size > self.max_bytes - _CLOSING_ROOM:
                self.full = True
                self._add("log-full", {"limit": self.max_bytes, "refused": kind})
                return False
            self._add(kind, data)
            return True

    def export(self, start: int = 0, page_bytes: int = PAGE_BYTES) -> dict:
        """Entries from ``start`` (a CBOR sequence of at most ``page_bytes``, but at least one
        entry when there is one), the signed head of the whole log, its signature."""
        with self._lock:
            start = max(0, min(start, len(self._entries)))
            out, size = [], 0
            for raw in self._entries[start:]:
                if out and size + len(raw) > page_bytes:
                    break
                out.append(raw)
                size += len(raw)
            head = {"keep_id": self.keep_id, "config_digest": self.config_digest,
                    "count": len(self._entries), "head": self._last, "t": round(time.time(), 3)}
        signature = self.key.sign(HEAD_DOMAIN + protocol.dumps(head))
        return {"entries": b"".join(out), "head": head, "signature": signature, "start": start}
