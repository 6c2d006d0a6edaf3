"""keepmgr --pool: booted, empty Keeps handed out at create, refilled in the background, each
attested fresh with the client's own nonce after it got the client's config."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time

import pytest

from keepbook.keep.shared import protocol
from keepbook.kernel.attestation import ExpectationBuilder, verify_attestation
from keepbook.kernel.client import ManagerClient
from keepbook.kernel.trust_policy import TrustPolicy
from tests.conftest import Manager
from tests.support.http import http
from tests.support.procs import alive


def _pool(mgr: Manager, backend: str) -> dict:
    status, body = http("GET", mgr.url + "/v1/health")
    assert status == 200
    return protocol.Reply.from_cbor(body).content["pool"][backend]


def _wait_ready(mgr: Manager, backend: str, want: int = 1, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while _pool(mgr, backend)["ready"] < want:
        assert time.monotonic() < deadline, f"pool for {backend} not refilled: {_pool(mgr, backend)}"
        time.sleep(0.05)


def _events(mgr: Manager) -> list[dict]:
    return [json.loads(line) for line in mgr.log.read_text().splitlines() if line.startswith("{")]


def _host_lines(mgr: Manager, keep_id: str) -> list[dict]:
    """keepldr's lifecycle lines for one Keep (its stderr goes to the manager's stderr file)."""
    out = []
    for line in mgr.stderr.read_text(errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("component") == "keepldr" and rec.get("keep") == keep_id:
            out.append(rec)
    return out


@pytest.fixture
def pooled(tmp_path):
    m = Manager(tmp_path, backends="nil,sim-snp", extra=["--pool", "1", "--pool-backends", "sim-snp"])
    yield m
    m.stop()


def test_pool_fills_and_reports(pooled):
    _wait_ready(pooled, "sim-snp")
    status, body = http("GET", pooled.url + "/v1/health")
    content = protocol.Reply.from_cbor(body).content
    assert set(content["pool"]) == {"sim-snp"}  # --pool-backends narrowed it
    assert content["pool"]["sim-snp"]["size"] == 1
    assert "keeps" not in content  # the unauthenticated health check tells nothing about Keeps
    status, body = http("GET", pooled.url + "/v1/keeps", token=pooled.token)
    assert protocol.KeepList.from_cbor(body).keeps == []  # pooled Keeps are nobody's, listed nowhere


def test_pooled_keep_gets_config_at_create_and_fresh_attestation(pooled):
    _wait_ready(pooled, "sim-snp")
    waiting = [e["keep"] for e in _events(pooled) if e["event"] == "pool-ready"]
    assert len(waiting) == 1
    pooled_id = waiting[0]
    # Until a client asks, the pooled Keep has been sent nothing: no start, no attest.
    assert not [r for r in _host_lines(pooled, pooled_id) if r["event"] == "relay-down"]

    async def scenario():
        client = ManagerClient(pooled.url, pooled.token)
        try:
            limits = {**protocol.DEFAULT_LIMITS, "timeout_s": 42}
            req = protocol.CreateKeep(backend="sim-snp", profile="staging", limits=limits, policy=b"")
            info = await client.create(req)
            nonce = os.urandom(32)
            resp = await client.attest(info.id, nonce)
            result = verify_attestation(resp, ExpectationBuilder().nonce(nonce).requested(req)
                                        .keep_id(info.id).trust_policy(TrustPolicy.load(None)).build())
            other = os.urandom(32)
            again = await client.attest(info.id, other)
            await client.delete(info.id)
            return info, nonce, resp, result, other, again
        finally:
            await client.close()

    info, nonce, resp, result, other, again = asyncio.run(scenario())
    assert info.id == pooled_id  # served from the pool
    assert result.ok, result.vector.to_text()
    assert resp.nonce == nonce and again.nonce == other
    assert resp.keep_config().limits["timeout_s"] == 42  # the client's config, given at create
    assert resp.evidence != again.evidence and resp.hpke_public_key != again.hpke_public_key
    relayed = [r["msg"] for r in _host_lines(pooled, pooled_id) if r["event"] == "relay-down"]
    assert relayed[:2] == ["start", "attest"]


def test_pool_refills_in_background_and_each_keep_serves_once(pooled):
    _wait_ready(pooled, "sim-snp")
    ids = []
    for _ in range(2):
        _wait_ready(pooled, "sim-snp")
        status, body = http("POST", pooled.url + "/v1/keeps", protocol.CreateKeep(
            backend="sim-snp", profile="staging", limits=dict(protocol.DEFAULT_LIMITS),
            policy=b"").to_cbor(), token=pooled.token)
        assert status == 201, body
        ids.append(protocol.KeepInfo.from_cbor(body).id)
    assert len(set(ids)) == 2
    takes = [e["keep"] for e in _events(pooled) if e["event"] == "pool-take"]
    assert takes == ids
    _wait_ready(pooled, "sim-snp")  # refilled after the second take too


def test_unpooled_backend_starts_cold(pooled):
    status, body = http("POST", pooled.url + "/v1/keeps", protocol.CreateKeep(
        backend="nil", profile="debug", limits=dict(protocol.DEFAULT_LIMITS), policy=b"").to_cbor(),
        token=pooled.token)
    assert status == 201
    keep_id = protocol.KeepInfo.from_cbor(body).id
    assert not [e for e in _events(pooled) if e["event"] == "pool-take" and e["keep"] == keep_id]


def test_shutdown_stops_pooled_keeps(tmp_path):
    m = Manager(tmp_path, backends="nil", extra=["--pool", "2"])
    try:
        _wait_ready(m, "nil", 2)
        pids = [int(p) for p in subprocess.run(["pgrep", "-f", "keepbook.keep.host.keepldr"],
                                               capture_output=True, text=True).stdout.split()]
        mine = [p for p in pids if open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[1]
                == str(m.proc.pid)]
        assert len(mine) == 2
    finally:
        m.stop()
    deadline = time.monotonic() + 10
    while any(alive(p) for p in mine) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(p) for p in mine)


@pytest.mark.parametrize("args, message", [(["--pool", "99"], "--pool must be between 0 and"),
                                           (["--pool", "1", "--pool-backends", "sgx"],
                                            "not offered here"),
                                           (["--pool", "1", "--pool-backends", "kvm"],
                                            "kvm Keeps are not pooled")])
def test_bad_pool_options_are_refused(tmp_path, args, message):
    out = subprocess.run([sys.executable, "-m", "keepbook.keep.host.keepmgr", "--port", "0",
                          "--backends", "nil,kvm", "--state-dir", str(tmp_path), *args],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and message in out.stderr
