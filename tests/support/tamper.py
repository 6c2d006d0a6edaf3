"""The tests' hostile keep manager is the library's (keep/host/hostile.py): the same API,
relayed to a real keepmgr, with hooks that may rewrite any request or answer."""

from __future__ import annotations

from keepbook.keep.host.hostile import HostileManager


class TamperingManager(HostileManager):
    def __init__(self, upstream: str, hook=None, request_hook=None):
        super().__init__(upstream, "none", hook=hook, request_hook=request_hook)
