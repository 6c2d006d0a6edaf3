"""The client's side of the keep manager API: HTTP (or HTTPS) with CBOR bodies to an untrusted
host.  Nothing it answers is trusted: attestation answers go to the verifier, endpoints to the
channel's checks (:mod:`keepbook.kernel.channel`).  Runs on the user's machine; holds only the
bearer token for the manager."""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import aiohttp

from keepbook.keep.shared import protocol
from keepbook.kernel.channel import KeepError, reason_of

CONNECT_TIMEOUT_S = 5.0
CONTROL_TIMEOUT_S = 90.0


class ManagerClient:
    def __init__(self, url: str, token: str | None, *, ssl_context: ssl.SSLContext | None = None):
        self.url = url.rstrip("/")
        self.token = token
        self._ssl = ssl_context
        self._session: aiohttp.ClientSession | None = None

    async def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                trust_env=False,
                timeout=aiohttp.ClientTimeout(total=CONTROL_TIMEOUT_S, sock_connect=CONNECT_TIMEOUT_S))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def call(self, method: str, path: str, body: protocol.Message | None,
                   expect: type[protocol.Message]) -> Any:
        headers = {"Accept": protocol.CBOR}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = None
        if body is not None:
            headers["Content-Type"] = protocol.CBOR
            data = body.to_cbor()
        http = await self._http()
        try:
            async with http.request(method, self.url + path, data=data, headers=headers,
                                    allow_redirects=False,
                                    ssl=self._ssl if self._ssl is not None else True) as resp:
                raw = await resp.content.read(protocol.MAX_CONTROL_BYTES + 1)
                status = resp.status
        except (aiohttp.ClientConnectorError, aiohttp.ClientOSError, ConnectionError) as exc:
            raise KeepError(f"cannot reach the keep manager at {self.url}: {exc.strerror or exc}. "
                            "Is it running? (`keepbook keepmgr`, or `%keep new` without --manager "
                            "for the embedded one)") from None
        except asyncio.TimeoutError:
            raise KeepError(f"the keep manager at {self.url} did not answer {method} {path} "
                            f"within {CONTROL_TIMEOUT_S:.0f} s") from None
        except aiohttp.ClientError as exc:
            raise KeepError(f"talking to the keep manager at {self.url} failed: {exc}") from None
        if len(raw) > protocol.MAX_CONTROL_BYTES:
            raise KeepError(f"the keep manager sent an oversized answer to {method} {path}")
        if 300 <= status < 400:
            raise KeepError(f"the keep manager answered {method} {path} with a redirect ({status}); "
                            "keepbook never follows redirects")
        if status >= 400:
            raise KeepError(f"keep manager refused {method} {path} ({status}): {reason_of(raw)}")
        try:
            return expect.from_cbor(raw)
        except protocol.ProtocolError as exc:
            raise KeepError(f"the keep manager's answer to {method} {path} breaks the protocol: "
                            f"{exc.reason}") from None

    async def contracts(self) -> protocol.Contracts:
        return await self.call("GET", "/v1/contracts", None, protocol.Contracts)

    async def create(self, req: protocol.CreateKeep) -> protocol.KeepInfo:
        return await self.call("POST", "/v1/keeps", req, protocol.KeepInfo)

    async def list(self) -> protocol.KeepList:
        return await self.call("GET", "/v1/keeps", None, protocol.KeepList)

    async def get(self, keep_id: str) -> protocol.KeepInfo:
        return await self.call("GET", f"/v1/keeps/{keep_id}", None, protocol.KeepInfo)

    async def delete(self, keep_id: str) -> protocol.KeepInfo:
        return await self.call("DELETE", f"/v1/keeps/{keep_id}", None, protocol.KeepInfo)

    async def attest(self, keep_id: str, nonce: bytes) -> protocol.AttestResponse:
        return await self.call("POST", f"/v1/keeps/{keep_id}/attest",
                               protocol.AttestRequest(nonce=nonce), protocol.AttestResponse)

    async def owner(self, keep_id: str, req: protocol.OwnerRequest) -> protocol.OwnerReply:
        """A data owner's sealed review request, relayed by the manager to the Keep."""
        return await self.call("POST", f"/v1/keeps/{keep_id}/owner", req, protocol.OwnerReply)

    async def provision(self, keep_id: str, sealed: bytes) -> protocol.ProvisionResponse:
        return await self.call("POST", f"/v1/keeps/{keep_id}/provision",
                               protocol.ProvisionRequest(sealed=sealed), protocol.ProvisionResponse)
