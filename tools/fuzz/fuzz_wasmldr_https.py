"""atheris harness: the Keep's attested HTTPS endpoints (/v1/run, /v1/request, /v1/audit,
/v1/upload) of a real, provisioned Keep (keepmgr → keepldr → wasmldr, nil backend), called with
the right client certificate — what a buggy or compromised client could send.

Property: 200 (a /v1/run stream ends with a status event), otherwise a 4xx with a reason; never a
5xx; each answer within 5 s; the wasmldr's RSS bounded."""

from __future__ import annotations

import http.client
import os
import tempfile
import time
from pathlib import Path

from common import Stats, fuzz, instrument, split_input

with instrument():
    from keepbook.keep.shared import protocol as p
from keepbook.kernel.agent import ClientAgent, NewKeep
from tests.conftest import Manager
from tests.hostile import mutations as mu
from tests.support.procs import keep_pids

RSS_LIMIT_KIB = 96 * 1024
PATHS = [("POST", "/v1/run", ["run"]), ("POST", "/v1/request", ["request"]),
         ("POST", "/v1/audit", ["audit_request"]), ("POST", "/v1/upload?name=d", [])]
stats = Stats("wasmldr HTTPS", every=10)

_tmp = Path(tempfile.mkdtemp(prefix="keepbook-fuzz-"))
manager = Manager(_tmp, backends="nil", extra=["--parent-pid", str(os.getpid())])  # ends with us
(_tmp / "tok").write_text(manager.token)
agent = ClientAgent()
agent.call(agent.new_keep(NewKeep(backend="nil", manager=manager.url, token_file=str(_tmp / "tok"))))
channel = agent.call(agent.current.ensure_channel())
HOST, PORT = channel.endpoint.host, str(channel.endpoint.port)
WASMLDR = keep_pids(agent.current.id)[1]
conn = http.client.HTTPSConnection(HOST, int(PORT), context=channel.context, timeout=10)


def post(method: str, path: str, ctype: str, body: bytes) -> tuple[int, bytes]:
    global conn
    for _ in range(2):
        try:
            conn.request(method, path, body=body, headers={"Content-Type": ctype} if ctype else {})
            resp = conn.getresponse()
            return resp.status, resp.read()
        except (http.client.HTTPException, ConnectionError):
            conn.close()
            conn = http.client.HTTPSConnection(HOST, int(PORT), context=channel.context, timeout=10)
    raise AssertionError("the Keep's endpoint stopped answering")


def test_one_input(data: bytes) -> None:
    structured, rng, raw = split_input(data)
    if structured:
        method, path, ctype, body = mu.http_request(rng, PATHS)
        if path.startswith("/v1/upload") and rng.random() < 0.7:
            ctype = "application/octet-stream"
    else:
        method, path, _ = PATHS[data[0] % len(PATHS)] if data else PATHS[0]
        ctype = "application/octet-stream" if path.startswith("/v1/upload") else p.CBOR
        body = raw
    started = time.monotonic()
    status, answer = post(method, path, ctype, body)
    took = time.monotonic() - started
    assert took < 5.0, f"{method} {path} took {took:.2f} s"
    if status == 200 and path == "/v1/run":
        dec = p.SequenceDecoder()
        dec.feed(answer)
        events = list(dec.events())
        assert events and events[-1].kind == "status" and dec.pending == 0
    else:
        mu.assert_clean_refusal(status, answer, allow=(200,), request=(method, path, ctype, body),
                                target="wasmldr-https")
    stats.count(status == 200, took)
    if stats.data["inputs"] % 200 == 0:
        stats.rss(mu.rss_kib(WASMLDR))
        grown = stats.data["rss_kib_now"] - stats.data["rss_kib_start"]
        assert grown < RSS_LIMIT_KIB, f"wasmldr RSS grew by {grown} KiB"


if __name__ == "__main__":
    try:
        fuzz(test_one_input, stats)
    finally:
        stats.flush()
