"""Who may use the keep manager (issue 8 item 6), beyond tests/host/test_keepmgr_api.py:
header variants, every route (also unknown ones and provision) with a wrong or missing token,
one user's Keep invisible to another for every per-Keep endpoint, the API over TLS
(--tls-cert/--tls-key), and the token reaching the kernel by --token-file or
$KEEPBOOK_MANAGER_TOKEN."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import os
import ssl

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from keepbook.keep.shared import protocol as p
from keepbook.kernel.client import KeepError, ManagerClient
from tests.conftest import Manager
from tests.hostile.report import record
from tests.kernel.kernel_client import Kernel
from tests.support.http import http

NONCE = os.urandom(32)
ALICE, BOB = "alice-" + os.urandom(12).hex(), "bob-" + os.urandom(12).hex()
ROUTES = [("GET", "/v1/contracts"), ("GET", "/v1/keeps"), ("POST", "/v1/keeps"), ("GET", "/v1/keeps/x"),
          ("DELETE", "/v1/keeps/x"), ("POST", "/v1/keeps/x/attest"), ("POST", "/v1/keeps/x/provision"),
          ("GET", "/v1/nope"), ("PUT", "/v1/keeps"), ("GET", "/v1/keeps/x/attest")]


@pytest.fixture(scope="module")
def two_users(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("users")
    (tmp / "a").write_text(ALICE + "\n")
    (tmp / "b").write_text(BOB + "\n")
    m = Manager(tmp, backends="nil", extra=["--token-file", str(tmp / "a"), "--token-file", str(tmp / "b")])
    yield m
    m.stop()


def reason(body: bytes) -> str:
    return p.ErrorBody.from_cbor(body).reason


def raw_auth(url: str, method: str, header: str | None) -> tuple[int, bytes]:
    import urllib.error
    import urllib.request
    req = urllib.request.Request(url, method=method, data=b"" if method in ("POST", "PUT") else None,
                                 headers={"Authorization": header} if header is not None else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer ", "bearer {ALICE}", "Basic {ALICE}",
                                    "Bearer {ALICE}x", "Bearer x{ALICE}", "{ALICE}", "Token {ALICE}",
                                    "Bearer {ALICE_UPPER}"],
                         ids=lambda h: repr(h))
def test_every_route_refuses_a_bad_authorization_header(two_users, header):
    h = header.format(ALICE=ALICE, ALICE_UPPER=ALICE.upper()) if header is not None else None
    for method, path in ROUTES:
        status, body = raw_auth(two_users.url + path, method, h)
        assert status == 401, (method, path, h, status)
        assert "bearer token" in reason(body)
        record("refused", f"{method} {path} with Authorization {header!r}")


def test_token_in_the_query_string_is_not_accepted(two_users):
    status, body = http("GET", f"{two_users.url}/v1/keeps?token={ALICE}")
    assert status == 401 and "missing bearer token" in reason(body)


def test_health_needs_no_token_and_reveals_no_keep_ids(two_users):
    http("POST", two_users.url + "/v1/keeps", p.CreateKeep(backend="nil").to_cbor(), token=ALICE)
    status, body = http("GET", two_users.url + "/v1/health")
    assert status == 200
    reply = p.Reply.from_cbor(body)
    assert set(reply.content) <= {"keeps", "pool", "version", "ok"}, reply.content


def test_another_users_keep_is_invisible_everywhere(two_users):
    m = two_users
    status, body = http("POST", m.url + "/v1/keeps", p.CreateKeep(backend="nil").to_cbor(), token=ALICE)
    kid = p.KeepInfo.from_cbor(body).id
    assert http("POST", f"{m.url}/v1/keeps/{kid}/attest", p.AttestRequest(nonce=NONCE).to_cbor(),
                token=ALICE)[0] == 200
    status, body = http("GET", m.url + "/v1/keeps", token=BOB)
    assert kid not in [k.id for k in p.KeepList.from_cbor(body).keeps]
    record("refused", "list: another user's Keep hidden")
    for method, path, payload in [
            ("GET", f"/v1/keeps/{kid}", None), ("DELETE", f"/v1/keeps/{kid}", None),
            ("POST", f"/v1/keeps/{kid}/attest", p.AttestRequest(nonce=NONCE).to_cbor()),
            ("POST", f"/v1/keeps/{kid}/provision", p.ProvisionRequest(sealed=bytes(64)).to_cbor())]:
        status, body = http(method, m.url + path, payload, token=BOB)
        assert status == 404 and kid in reason(body) and "no Keep" in reason(body), (method, path)
        # indistinguishable from a Keep that does not exist
        status2, body2 = http(method, m.url + path.replace(kid, "0" * 16), payload, token=BOB)
        assert status2 == 404 and reason(body2).replace("0" * 16, kid) == reason(body)
        record("refused", f"{method} {path.replace(kid, '{id}')} by another user")
    status, body = http("GET", f"{m.url}/v1/keeps/{kid}", token=ALICE)
    assert status == 200 and p.KeepInfo.from_cbor(body).state == "attested"


# ---------------------------------------------------------------- TLS


def _ca_and_server(tmp) -> tuple[str, str, str]:
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "keepbook test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = (tmp / "ca.pem", tmp / "server.pem", tmp / "server.key")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return tuple(str(x) for x in paths)  # type: ignore[return-value]


@pytest.fixture(scope="module")
def tls_manager(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tls")
    ca, cert, key = _ca_and_server(tmp)
    m = Manager(tmp, backends="nil", extra=["--tls-cert", cert, "--tls-key", key])
    yield m, ca
    m.stop()


def test_tls_api_with_the_right_ca(tls_manager):
    m, ca = tls_manager
    assert m.url.startswith("https://")
    ctx = ssl.create_default_context(cafile=ca)

    async def go():
        client = ManagerClient(m.url, m.token, ssl_context=ctx)
        try:
            contracts = await client.contracts()
            info = await client.create(p.CreateKeep(backend="nil"))
            await client.delete(info.id)
            return contracts
        finally:
            await client.close()
    assert "nil" in [b.name for b in asyncio.run(go()).backends]
    record("refused", "TLS API reachable only with the right CA (control)")


def test_tls_api_refuses_an_untrusted_client_and_plain_http(tls_manager):
    m, _ = tls_manager

    async def go():
        client = ManagerClient(m.url, m.token)   # system CAs only
        try:
            await client.contracts()
        finally:
            await client.close()
    with pytest.raises(KeepError, match="certificate|SSL"):
        asyncio.run(go())
    status = None
    try:
        status = http("GET", m.url.replace("https://", "http://") + "/v1/contracts", token=m.token, timeout=5)[0]
    except OSError:
        pass
    assert status != 200
    record("refused", "TLS API: untrusted certificate / plain HTTP")


def test_keep_new_can_trust_a_custom_manager_ca(tls_manager, tmp_path):
    m, ca = tls_manager
    tf = tmp_path / "tok"
    tf.write_text(m.token)
    k = Kernel()
    try:
        res = k.execute(f"%keep new --backend nil --manager {m.url} --token-file {tf} --manager-ca {ca}")
        assert res.status == "ok", res.text()
    finally:
        k.close()


# ---------------------------------------------------------------- token into the kernel


def test_kernel_token_by_file_and_by_environment(tls_manager, two_users, tmp_path, monkeypatch):
    """--token-file FILE, $KEEPBOOK_MANAGER_TOKEN, and both wrong/missing: a clear 401 reason.
    Also the TLS manager through the kernel, trusting its CA by $SSL_CERT_FILE."""
    m = two_users
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.write_text(ALICE + "\n")
    bad.write_text("not-the-token\n")
    tls, ca = tls_manager
    monkeypatch.setenv("KEEPBOOK_MANAGER_TOKEN", BOB)
    monkeypatch.setenv("SSL_CERT_FILE", ca)
    k = Kernel()
    try:
        res = k.execute(f"%keep new --backend nil --manager {m.url} --token-file {good}")
        assert res.status == "ok", res.text()
        res = k.execute(f"%keep new --backend nil --manager {m.url}")      # from the environment
        assert res.status == "ok", res.text()
        res = k.execute(f"%keep new --backend nil --manager {m.url} --token-file {bad}")
        assert res.status == "error" and "401" in res.text() and "wrong bearer token" in res.text()
        res = k.execute(f"%keep new --backend nil --manager {m.url} --token-file {tmp_path / 'missing'}")
        assert res.status == "error" and "cannot read token file" in res.text()
        tf = tmp_path / "tls-token"
        tf.write_text(tls.token)
        res = k.execute(f"%keep new --backend nil --manager {tls.url} --token-file {tf}")
        assert res.status == "ok", res.text()
        res = k.execute("print('over TLS')")
        assert res.status == "ok" and "over TLS" in res.stream("stdout"), res.text()
    finally:
        k.close()
    record("refused", "kernel: wrong token file → 401 with reason")
