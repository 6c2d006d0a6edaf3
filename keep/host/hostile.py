"""A deliberately hostile keep manager, for teaching and for tests.

It serves the same API as keepmgr by relaying to a real one, and applies one *attack* to what
passes through — exactly what an untrusted host can do.  The teaching notebook runs it to show
the verifier catching each attack; the test suite uses it to prove the client sends nothing
after a failed attestation (it records every request it relayed).

Never run it in front of real work: it exists to lie.
"""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Callable

import aiohttp
from aiohttp import web

from keepbook.keep.shared import protocol

ResponseHook = Callable[[str, str, bytes, int], "tuple[bytes, int]"]
RequestHook = Callable[[str, str, bytes], bytes]


def _flip(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 0x01]) + data[offset + 1:]


def _on_attest(mutate: Callable[[protocol.AttestResponse], None]) -> ResponseHook:
    def hook(method: str, path: str, body: bytes, status: int) -> tuple[bytes, int]:
        if path.endswith("/attest") and status == 200:
            resp = protocol.AttestResponse.from_cbor(body)
            mutate(resp)
            return resp.to_cbor(), status
        return body, status
    return hook


def _report_data_offset(resp: protocol.AttestResponse) -> int:
    return {"sev-snp": 0x50, "tdx": 48 + 520, "sgx": 48 + 320}.get(resp.evidence_kind, len(resp.evidence) - 1)


def _replay() -> ResponseHook:
    first: list[bytes] = []

    def hook(method: str, path: str, body: bytes, status: int) -> tuple[bytes, int]:
        if path.endswith("/attest") and status == 200:
            if not first:
                first.append(body)
            else:
                return first[0], status
        return body, status
    return hook


def _downgrade_profile(method: str, path: str, body: bytes) -> bytes:
    if method == "POST" and path == "/v1/keeps":
        req = protocol.CreateKeep.from_cbor(body)
        req.profile = "debug"
        return req.to_cbor()
    return body


def _substitute_endpoint_cert(method: str, path: str, body: bytes, status: int) -> tuple[bytes, int]:
    if path.endswith("/provision") and status == 200:
        from cryptography.hazmat.primitives.asymmetric import ec

        from keepbook.keep.shared.certificates import self_signed

        resp = protocol.ProvisionResponse.from_cbor(body)
        resp.server_cert = self_signed(ec.generate_private_key(ec.SECP256R1()), "host's own")
        return resp.to_cbor(), status
    return body, status


#: name → (what the host does, response hook, request hook)
ATTACKS: dict[str, tuple[str, ResponseHook | None, RequestHook | None]] = {
    "none": ("relays faithfully", None, None),
    "flip-evidence": ("flips one bit of the signed evidence",
                      _on_attest(lambda r: setattr(r, "evidence", _flip(r.evidence, 0x90))), None),
    "change-report-data": ("changes the report data inside the evidence",
                           _on_attest(lambda r: setattr(r, "evidence", _flip(r.evidence, _report_data_offset(r)))), None),
    "swap-hpke-key": ("replaces the Keep's HPKE key with its own, to read what you seal",
                      _on_attest(lambda r: setattr(r, "hpke_public_key", os.urandom(len(r.hpke_public_key)))), None),
    "replay": ("answers every attestation after the first with the first one's evidence", _replay(), None),
    "downgrade-profile": ("asks the Keep for the debug profile, whatever you asked for", None, _downgrade_profile),
    "drop-chain": ("drops the vendor certificate chain", _on_attest(lambda r: setattr(r, "certs", [])), None),
    "substitute-endpoint-cert": ("puts its own TLS certificate in front of the Keep's endpoint",
                                 _substitute_endpoint_cert, None),
}


class HostileManager:
    """Relay to ``upstream`` (a real keepmgr), applying ``attack`` or the given hooks."""

    def __init__(self, upstream: str, attack: str = "none", *, hook: ResponseHook | None = None,
                 request_hook: RequestHook | None = None, host: str = "127.0.0.1"):
        if attack not in ATTACKS:
            raise ValueError(f"unknown attack {attack!r}; known: {', '.join(ATTACKS)}")
        self.attack = attack
        self.description, default_hook, default_request_hook = ATTACKS[attack]
        self.upstream = upstream.rstrip("/")
        self.hook = hook or default_hook or (lambda method, path, body, status: (body, status))
        self.request_hook = request_hook or default_request_hook or (lambda method, path, body: body)
        self.requests: list[tuple[str, str, bytes]] = []
        self.relayed: list[bytes] = []
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="hostile-keepmgr", daemon=True)
        self._thread.start()
        self.url = asyncio.run_coroutine_threadsafe(self._start(host), self.loop).result(10)

    async def _start(self, host: str) -> str:
        app = web.Application(client_max_size=protocol.MAX_MESSAGE_BYTES)
        app.router.add_route("*", "/{tail:.*}", self._relay)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, 0)
        await site.start()
        self._session = aiohttp.ClientSession()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return f"http://{host}:{port}"

    async def _relay(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append((request.method, request.path, body))
        self.relayed.append(body)
        body = self.request_hook(request.method, request.path, body)
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("authorization", "content-type")}
        async with self._session.request(request.method, self.upstream + request.path_qs, data=body,
                                         headers=headers) as resp:
            data, status = await resp.read(), resp.status
        self.relayed.append(data)
        data, status = self.hook(request.method, request.path, data, status)
        return web.Response(body=data, status=status, content_type=protocol.CBOR)

    def saw(self, suffix: str) -> bool:
        """Did the client send a request whose path ends with ``suffix`` (e.g. "/provision")?"""
        return any(path.endswith(suffix) for _, path, _ in self.requests)

    def close(self) -> None:
        async def stop() -> None:
            await self._session.close()
            await self._runner.cleanup()
        try:
            asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)

    def __enter__(self) -> "HostileManager":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
