"""The keep manager's HTTP API: happy paths, and a 4xx with a reason for every bad request —
while the server stays up."""

from __future__ import annotations

import os

import cbor2
import pytest

from keepbook.keep.shared import protocol as p
from tests.support.http import http

NONCE = os.urandom(32)


def reason(body: bytes) -> str:
    return p.ErrorBody.from_cbor(body).reason


def create(m, backend: str = "nil", profile: str = "staging") -> p.KeepInfo:
    status, body = http("POST", m.url + "/v1/keeps", p.CreateKeep(backend=backend, profile=profile).to_cbor(),
                        token=m.token)
    assert status == 201, reason(body)
    return p.KeepInfo.from_cbor(body)


def test_health_needs_no_token(shared_manager) -> None:
    status, body = http("GET", shared_manager.url + "/v1/health")
    assert status == 200 and p.Reply.from_cbor(body).ok


@pytest.mark.parametrize("token,why", [(None, "missing bearer token"), ("nope", "wrong bearer token")])
def test_every_endpoint_needs_the_token(shared_manager, token, why) -> None:
    for method, path in [("GET", "/v1/contracts"), ("GET", "/v1/keeps"), ("POST", "/v1/keeps"),
                         ("GET", "/v1/keeps/x"), ("DELETE", "/v1/keeps/x"),
                         ("POST", "/v1/keeps/x/attest"), ("POST", "/v1/keeps/x/provision"),
                         ("POST", "/v1/keeps/x/owner")]:
        status, body = http(method, shared_manager.url + path, b"" if method == "POST" else None, token=token)
        assert status == 401, (method, path)
        assert why in reason(body)


def test_contracts(shared_manager) -> None:
    status, body = http("GET", shared_manager.url + "/v1/contracts", token=shared_manager.token)
    assert status == 200
    backends = {b.name: b for b in p.Contracts.from_cbor(body).backends}
    assert backends["nil"].protection == "none" and backends["nil"].available
    assert backends["sim-snp"].protection == "simulated"
    assert backends["snp"].protection == "hardware"
    # an snp Keep is its own confidential VM: this host (no SEV-SNP KVM) cannot start one, and
    # the note says which part is missing — never the old "this node is a CVM" interface
    note = backends["snp"].note
    assert not backends["snp"].available and "tsm/report" not in note
    assert any(why in note for why in ("SEV-SNP guests", "QEMU is not installed", "no Keep image"))


def test_keep_lifecycle(shared_manager) -> None:
    m = shared_manager
    info = create(m)
    assert info.state == "ready" and info.backend == "nil"
    status, body = http("GET", f"{m.url}/v1/keeps/{info.id}", token=m.token)
    assert status == 200 and p.KeepInfo.from_cbor(body).id == info.id
    status, body = http("GET", f"{m.url}/v1/keeps", token=m.token)
    assert info.id in [k.id for k in p.KeepList.from_cbor(body).keeps]
    status, body = http("POST", f"{m.url}/v1/keeps/{info.id}/attest", p.AttestRequest(nonce=NONCE).to_cbor(),
                        token=m.token)
    assert status == 200
    resp = p.AttestResponse.from_cbor(body)
    assert resp.nonce == NONCE and resp.evidence_kind == "nil"
    status, body = http("DELETE", f"{m.url}/v1/keeps/{info.id}", token=m.token)
    assert status == 200 and p.KeepInfo.from_cbor(body).state == "closed"
    status, body = http("POST", f"{m.url}/v1/keeps/{info.id}/attest", p.AttestRequest(nonce=NONCE).to_cbor(),
                        token=m.token)
    assert status == 409 and "closed" in reason(body)


BAD_CREATE = [
    (b"\xff\x00", "application/cbor", 400, "malformed CBOR"),
    (cbor2.dumps({"v": 9, "msg": "create_keep"}), "application/cbor", 400, "unsupported protocol version 9"),
    (cbor2.dumps({"v": 1, "msg": "create_keep", "backend": 7, "profile": "staging",
                  "limits": p.DEFAULT_LIMITS, "policy": b""}), "application/cbor", 400, "expected text"),
    (p.CreateKeep(backend="nil").to_cbor(), "application/json", 415, "wrong content type"),
    (p.CreateKeep(backend="nil").to_cbor(), None, 415, "wrong content type"),
    (p.CreateKeep(backend="quantum").to_cbor(), "application/cbor", 400, "not offered here"),
    (p.CreateKeep(backend="snp").to_cbor(), "application/cbor", 409, "not available on this host"),
    (b"\x00" * (p.MAX_CONTROL_BYTES + 10), "application/cbor", 413, "exceeds the limit"),
    (b"", "application/cbor", 400, "empty body"),
]


@pytest.mark.parametrize("body,ctype,status,why", BAD_CREATE, ids=[b[3] for b in BAD_CREATE])
def test_bad_create_is_4xx_with_reason(shared_manager, body, ctype, status, why) -> None:
    got, answer = http("POST", shared_manager.url + "/v1/keeps", body, token=shared_manager.token,
                       content_type=ctype)
    assert got == status
    assert why in reason(answer)
    assert http("GET", shared_manager.url + "/v1/health")[0] == 200  # still up


def test_bad_attest_and_unknown_keep(shared_manager) -> None:
    m = shared_manager
    status, body = http("POST", f"{m.url}/v1/keeps/nope/attest", p.AttestRequest(nonce=NONCE).to_cbor(), token=m.token)
    assert status == 404 and "no Keep" in reason(body)
    info = create(m)
    status, body = http("POST", f"{m.url}/v1/keeps/{info.id}/attest",
                        cbor2.dumps({"v": 1, "msg": "attest", "nonce": b"x"}), token=m.token)
    assert status == 400 and "minimum" in reason(body)
    status, body = http("POST", f"{m.url}/v1/keeps/{info.id}/provision",
                        p.ProvisionRequest(sealed=bytes(64)).to_cbor(), token=m.token)
    assert status == 409 and "ask for evidence (attest) first" in reason(body)
    http("POST", f"{m.url}/v1/keeps/{info.id}/attest", p.AttestRequest(nonce=NONCE).to_cbor(), token=m.token)
    status, body = http("POST", f"{m.url}/v1/keeps/{info.id}/provision",
                        p.ProvisionRequest(sealed=bytes(64)).to_cbor(), token=m.token)
    assert status == 400 and "does not open" in reason(body)
    http("DELETE", f"{m.url}/v1/keeps/{info.id}", token=m.token)


def test_host_logs_lifecycle_only(manager) -> None:
    info = create(manager, profile="production")
    http("POST", f"{manager.url}/v1/keeps/{info.id}/attest", p.AttestRequest(nonce=NONCE).to_cbor(), token=manager.token)
    http("DELETE", f"{manager.url}/v1/keeps/{info.id}", token=manager.token)
    log = manager.log.read_text()
    assert "keep-starting" in log and "keep-attested" in log and "keep-closed" in log
    assert NONCE.hex() not in manager.host_visible_text()


def test_keeps_are_invisible_across_tokens(tmp_path) -> None:
    from tests.conftest import Manager

    a, b = tmp_path / "a.token", tmp_path / "b.token"
    a.write_text("alice-token-0123456789\n")
    b.write_text("bob-token-9876543210\n")
    m = Manager(tmp_path, backends="nil", extra=["--token-file", str(a), "--token-file", str(b)])
    try:
        status, body = http("POST", m.url + "/v1/keeps", p.CreateKeep(backend="nil").to_cbor(),
                            token="alice-token-0123456789")
        assert status == 201
        kid = p.KeepInfo.from_cbor(body).id
        bob = "bob-token-9876543210"
        status, body = http("GET", m.url + "/v1/keeps", token=bob)
        assert status == 200 and kid not in [k.id for k in p.KeepList.from_cbor(body).keeps]
        for method, path, payload in [("GET", f"/v1/keeps/{kid}", None), ("DELETE", f"/v1/keeps/{kid}", None),
                                      ("POST", f"/v1/keeps/{kid}/attest", p.AttestRequest(nonce=NONCE).to_cbor())]:
            status, body = http(method, m.url + path, payload, token=bob)
            assert status == 404, (method, path)
        status, body = http("GET", f"{m.url}/v1/keeps/{kid}", token="alice-token-0123456789")
        assert status == 200 and p.KeepInfo.from_cbor(body).state == "ready"
    finally:
        m.stop()


def test_token_file_is_private(manager) -> None:
    assert (manager.token_file.stat().st_mode & 0o077) == 0
    assert len(manager.token) >= 32


def test_systemd_launcher_that_cannot_work_is_a_clear_start_error(tmp_path) -> None:
    import subprocess
    import sys

    from keepbook.keep.host.keepmgr import systemd_run_problem

    import pytest
    if systemd_run_problem() is None:
        pytest.skip("systemd-run --user works here; the refusal path cannot be shown")
    r = subprocess.run([sys.executable, "-m", "keepbook.keep.host.keepmgr", "--port", "0",
                        "--state-dir", str(tmp_path), "--launcher", "systemd-run"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--launcher systemd-run cannot start Keeps here" in r.stderr


@pytest.mark.parametrize("body, status, why", [
    (cbor2.dumps({"v": 1, "msg": "owner_request", "suite": "x25519-hkdfsha256-aes128gcm"}), 400,
     "required field 'sealed' is missing"),
    (cbor2.dumps({"v": 1, "msg": "owner_request", "suite": "x25519-hkdfsha256-aes128gcm",
                  "sealed": b"\0" * 20000}), 413, "exceeds the limit"),
    (p.OwnerRequest(suite="x25519-hkdfsha256-aes128gcm", sealed=b"\1" * 64).to_cbor(), 400,
     "does not open with this Keep's key"),
    (p.OwnerRequest(suite="rot13", sealed=b"\1" * 64).to_cbor(), 400, "no key of suite"),
])
def test_malformed_owner_requests_are_refused_with_a_reason(shared_manager, body, status, why) -> None:
    """The owner channel's relay (docs/protocol.md): the Keep (or the manager, for the shape)
    refuses what it cannot open, naming why; the Keep keeps answering."""
    m = shared_manager
    info = create(m)
    got, answer = http("POST", f"{m.url}/v1/keeps/{info.id}/owner", body, token=m.token)
    assert (got, why in reason(answer)) == (status, True), reason(answer)
    status_, _ = http("POST", f"{m.url}/v1/keeps/{info.id}/attest", p.AttestRequest(nonce=NONCE).to_cbor(),
                      token=m.token)
    assert status_ == 200
