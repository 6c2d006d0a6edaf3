"""Signature checks that a repeated verification may reuse, remembered by their exact bytes.

Whether a signature verifies is a pure function of (algorithm, public key, signed bytes,
signature).  Remembering the answer is safe only when *all* of them are part of the key, byte
for byte — which is what :func:`remember` does.  Vendor chains and collateral (AMD's ASK/ARK,
Intel's PCK chain, TCB info, QE identity, CRLs, the QE report) are the same for every piece of
evidence from one platform; only the evidence's own signature is new each time, and that one is
checked every time by the caller (it is never passed through here with a reused key).
"""

from __future__ import annotations

import threading
from typing import Callable

_MAX_ENTRIES = 4096
_RESULTS: dict[tuple[bytes, ...], bool] = {}
_LOCK = threading.Lock()


def remember(what: str, parts: tuple[bytes, ...], check: Callable[[], bool]) -> bool:
    """``check()``'s answer for these exact bytes, computed once per process (bounded)."""
    key = (what.encode(), *parts)
    hit = _RESULTS.get(key)
    if hit is not None:
        return hit
    ok = bool(check())
    with _LOCK:
        if len(_RESULTS) >= _MAX_ENTRIES:
            _RESULTS.clear()
        _RESULTS[key] = ok
    return ok


def forget() -> None:
    """Drop every remembered answer (tests, and benchmarks that time a cold verification)."""
    with _LOCK:
        _RESULTS.clear()
