"""What the host of a VM Keep sees, and what it can do with what it relays.

* Canary: a secret printed by a Wasm cell, written to its stderr before a trap, uploaded as a
  sealed dataset and printed back by a C cell must appear in no file the host's components
  write (keepmgr and keepldr logs and stdio — including the VM console lines keepldr keeps —
  the state directory, the Keep's scratch directory on the host) and in no byte the host
  relayed (a recording proxy in front of the keep manager).  The notebook does get it.
* The host knows the forwarded endpoint and the server certificate: connecting itself, without
  the client key sealed to the Keep, is refused.
* The host chooses the endpoint it relays (keepldr rewrites it to the forwarded port anyway):
  pointing the client at its own TLS server fails the pin before anything is sent.

What this does NOT show: a kvm Keep's memory is the host's to read (NO PROTECTION (VM)) — these
are the host's files, logs and relayed bytes only (docs/host-visibility.md)."""

from __future__ import annotations

import glob
import http.client
import secrets
import socket
import ssl
import threading

import pytest
import wasmtime

from keepbook.keep.shared import protocol as p
from keepbook.keep.shared.certificates import self_signed
from keepbook.kernel.agent import ClientAgent, NewKeep
from keepbook.kernel.client import KeepError
from keepbook.kernel.compilers.compile import compile_cell
from tests.canary.test_canary import _forms, _owner_key, wasm_printing_then_trapping
from tests.conftest import Manager
from tests.support.tamper import TamperingManager
from tests.vm.conftest import requires_vm

pytestmark = [requires_vm, pytest.mark.slow]

BOOT_S = 150
MEMORY = 64 << 20
CAT_DATA = r'''#include <stdio.h>
int main(void) {
  FILE *f = fopen("/data/canary.csv", "r");
  char line[256];
  if (!f) return 1;
  while (fgets(line, sizeof line, f)) fputs(line, stdout);
  return 0;
}'''


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    d = tmp_path_factory.mktemp("vmhost")
    (d / "state").mkdir()
    mgr = Manager(d / "state", backends="kvm")
    token = d / "token"
    token.write_text(mgr.token)
    yield mgr, str(token)
    mgr.stop()


def test_secret_never_reaches_the_host_of_a_vm_keep(host, tmp_path):
    mgr, token = host
    secret = "canary-" + secrets.token_hex(16)
    proxy = TamperingManager(mgr.url)
    agent = ClientAgent()
    events: list = []
    scratch_files: list[str] = []
    try:
        agent.call(agent.new_keep(NewKeep(backend="kvm", manager=proxy.url, token_file=token,
                                          memory_bytes=MEMORY)), timeout=BOOT_S)
        agent.call(agent.run("wasm", events.append, module=wasm_printing_then_trapping(secret)),
                   timeout=60)
        data = tmp_path / "data.csv"
        data.write_text(f"id,secret\n1,{secret}\n")
        agent.call(agent.upload(str(data), "canary.csv", owner_key=str(_owner_key(tmp_path))),
                   timeout=60)
        agent.call(agent.run("wasm", events.append, module=compile_cell("c", CAT_DATA).module),
                   timeout=60)
        agent.call(agent.audit(), timeout=60)
        kid = agent.current.id
        # the Keep's directory on the host holds only the control socket
        for d in glob.glob(f"/dev/shm/keepbook-keep-{kid}-*") + glob.glob(f"/tmp/keepbook-keep-{kid}-*"):
            scratch_files += glob.glob(d + "/**", recursive=True)
        _host_connects_itself(proxy)
    finally:
        agent.stop()
        proxy.close()
    host_text = mgr.host_visible_text()
    relayed = b"".join(proxy.relayed)
    assert "vm-booted" in host_text, "the host log must show the VM's lifecycle (else: wrong log)"
    assert secret in repr([e.content for e in events]), "the notebook must get the secret (staging)"
    for form in _forms(secret):
        assert form.decode() not in host_text, "the secret is in a host file"
        assert form not in relayed, "the secret is in bytes the host relayed"
    names = {f.rsplit("/", 1)[-1] for f in scratch_files if not f.endswith("/")}
    assert names <= {"control.sock"}, names


def _host_connects_itself(proxy: TamperingManager) -> None:
    """The host connects to the forwarded port it relayed in the provisioning answer."""
    answer = p.ProvisionResponse.from_cbor(next(
        body for (_, path, _), body in zip(proxy.requests, proxy.relayed[1::2])
        if path.endswith("/provision")))
    host, port = answer.endpoint.removeprefix("https://").rsplit(":", 1)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    conn = http.client.HTTPSConnection(host, int(port), context=ctx, timeout=10)
    try:
        conn.request("POST", "/v1/request", body=p.Request(op="status").to_cbor(),
                     headers={"Content-Type": p.CBOR})
        status = conn.getresponse().status
    except (ssl.SSLError, ConnectionError, OSError, http.client.HTTPException):
        status = None  # TLS refused: no client certificate
    finally:
        conn.close()
    assert status != 200, "the host reached the Keep's channel without the sealed client key"


class _HostTls:
    """A TLS server of the host's own, with its own certificate."""

    def __init__(self, tmp_path) -> None:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography import x509

        key = ec.generate_private_key(ec.SECP256R1())
        (tmp_path / "k.pem").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        (tmp_path / "c.pem").write_bytes(x509.load_der_x509_certificate(
            self_signed(key, "the host")).public_bytes(serialization.Encoding.PEM))
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(tmp_path / "c.pem", tmp_path / "k.pem")
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.port = self.sock.getsockname()[1]
        self.received = b""
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                raw, _ = self.sock.accept()
            except OSError:
                return
            try:
                with self.ctx.wrap_socket(raw, server_side=True) as tls:
                    tls.settimeout(5)
                    self.received += tls.recv(65536)
            except (OSError, ssl.SSLError):
                pass

    def close(self) -> None:
        self.sock.close()


def test_endpoint_the_host_chooses_cannot_take_the_channel(host, tmp_path):
    mgr, token = host
    fake = _HostTls(tmp_path)

    def to_host_server(method: str, path: str, body: bytes, status: int) -> tuple[bytes, int]:
        if path.endswith("/provision") and status == 200:
            resp = p.ProvisionResponse.from_cbor(body)
            resp.endpoint = f"https://127.0.0.1:{fake.port}"
            return resp.to_cbor(), status
        return body, status

    proxy = TamperingManager(mgr.url, hook=to_host_server)
    agent = ClientAgent()
    module = bytes(wasmtime.wat2wasm('(module (func (export "_start")))'))
    try:
        agent.call(agent.new_keep(NewKeep(backend="kvm", manager=proxy.url, token_file=token,
                                          memory_bytes=MEMORY)), timeout=BOOT_S)
        with pytest.raises(KeepError, match="pinned certificate"):
            agent.call(agent.run("wasm", lambda e: None, module=module), timeout=60)
    finally:
        agent.stop()
        proxy.close()
        fake.close()
    assert module not in fake.received and b"/v1/run" not in fake.received
