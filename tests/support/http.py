"""Plain synchronous HTTP for tests (stdlib only)."""

from __future__ import annotations

import urllib.error
import urllib.request


def http(method: str, url: str, body: bytes | None = None, *, token: str | None = None,
         content_type: str | None = "application/cbor", timeout: float = 30) -> tuple[int, bytes]:
    headers = {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if body is not None and content_type:
        headers["Content-Type"] = content_type
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
