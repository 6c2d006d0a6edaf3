"""atheris harness: every keep manager HTTP endpoint, in process (aiohttp test server on a
private loop; the Keeps it starts are real keepldr/wasmldr processes).

Property: 2xx for valid requests, otherwise a 4xx whose CBOR error body has a reason — never a
5xx; each answer within 5 s; RSS of the process bounded."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from common import Stats, fuzz, instrument, split_input

with instrument():
    from keepbook.keep.shared import protocol as p
    from keepbook.keep.host import backends as backends_mod
    from keepbook.keep.host.keepmgr import KeepManager, Log
import aiohttp
from aiohttp.test_utils import TestServer

from tests.hostile import mutations as mu

TOKEN = "fuzz-token-" + os.urandom(8).hex()
stats = Stats("keepmgr HTTP (in process)", every=50)
loop = asyncio.new_event_loop()
RSS_LIMIT_KIB = 64 * 1024


async def _setup():
    mgr = KeepManager(backends=backends_mod.offered(["nil"]), tokens=[TOKEN],
                      log=Log(Path(os.environ.get("KEEPBOOK_FUZZ_LOG", os.devnull))))
    server = TestServer(mgr.app())
    await server.start_server()
    session = aiohttp.ClientSession()
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": p.CBOR}
    async with session.post(server.make_url("/v1/keeps"), data=p.CreateKeep(backend="nil").to_cbor(),
                            headers=headers) as r:
        kid = p.KeepInfo.from_cbor(await r.read()).id
    return mgr, server, session, kid


mgr, server, session, KID = loop.run_until_complete(_setup())
PATHS = [("GET", "/v1/health", []), ("GET", "/v1/contracts", []), ("GET", "/v1/keeps", []),
         ("GET", f"/v1/keeps/{KID}", []), ("GET", "/v1/keeps/" + "f" * 16, []),
         ("DELETE", "/v1/keeps/" + "0" * 16, []), ("POST", "/v1/keeps", ["create_keep"]),
         ("POST", f"/v1/keeps/{KID}/attest", ["attest"]),
         ("POST", f"/v1/keeps/{KID}/provision", ["provision"])]
NOT_OFFERED = {**mu.template("create_keep"), "backend": "not-offered"}


async def one(method: str, path: str, ctype: str, body: bytes, token: str | None) -> tuple[int, bytes]:
    headers = {}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if ctype:
        headers["Content-Type"] = ctype
    async with session.request(method, server.make_url(path), data=body or None, headers=headers,
                               timeout=aiohttp.ClientTimeout(total=10)) as r:
        return r.status, await r.read()


def rss() -> int:
    return mu.rss_kib(os.getpid())


def test_one_input(data: bytes) -> None:
    structured, rng, raw_bytes = split_input(data)
    if structured:
        method, path, ctype, body = mu.http_request(rng, PATHS)
        if path == "/v1/keeps" and method == "POST" and rng.random() < 0.95:
            body = mu.mutate(rng, NOT_OFFERED)
    else:
        method, path, _ = PATHS[data[0] % len(PATHS)] if data else PATHS[0]
        ctype, body = p.CBOR, raw_bytes
    token = rng.choice([TOKEN] * 8 + [None, TOKEN[::-1]]) if structured else TOKEN
    started = time.monotonic()
    status, answer = loop.run_until_complete(one(method, path, ctype, body, token))
    took = time.monotonic() - started
    assert took < 5.0, f"{method} {path} took {took:.2f} s"
    if status == 201:   # a Keep really started: close it again
        kid = p.KeepInfo.from_cbor(answer).id
        loop.run_until_complete(one("DELETE", f"/v1/keeps/{kid}", "", b"", TOKEN))
    if token != TOKEN and server.make_url(path).path != "/v1/health":
        assert status in (401, 404, 405), (status, method, path)
    mu.assert_clean_refusal(status, answer, request=(method, path, ctype, body), target="keepmgr")
    stats.count(status < 400, took)
    if stats.data["inputs"] % 500 == 0:
        stats.rss(rss())
        grown = stats.data["rss_kib_now"] - stats.data["rss_kib_start"]
        assert grown < RSS_LIMIT_KIB, f"RSS grew by {grown} KiB"


if __name__ == "__main__":
    fuzz(test_one_input, stats)
