"""The attested channel speaks only TLS to the exact pinned key (issue 12, item 1).

The host relays ``provision_response.endpoint``.  Rewritten to ``http://`` it once made the
client post the cell in clear to the host, which then showed its own forged output under
"RESULT: VERIFIED".  Each way the host can point the client elsewhere must fail before one byte
of a cell (or a completion request) leaves, with the failing check named."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading

import pytest
import wasmtime
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from keepbook.keep.shared import certificates
from keepbook.keep.shared import protocol as p
from keepbook.kernel.channel import Channel, ChannelRefused, Endpoint
from tests.conftest import HELLO_WAT
from tests.hostile.report import record
from tests.hostile.test_malicious_manager import agent, hostile, nothing_left  # noqa: F401

MODULE = bytes(wasmtime.wat2wasm(HELLO_WAT))
SECRET = "cell-code-the-host-must-never-see-7f3a"


class Listener:
    """A TCP server of the host's that records every byte it is sent (and answers nothing)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.received = bytearray()
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            conn.settimeout(2)
            try:
                while chunk := conn.recv(65536):
                    self.received += chunk
            except OSError:
                pass
            conn.close()

    def close(self) -> None:
        self.sock.close()


def rewrite_endpoint(new: str):
    def hook(method, path, body, status):
        if path.endswith("/provision") and status == 200:
            resp = p.ProvisionResponse.from_cbor(body)
            resp.endpoint = new.format(real=resp.endpoint)
            return resp.to_cbor(), status
        return body, status
    return hook


def run_secret(agent):
    return agent.call(agent.run("python", lambda e: None, code=f"print('{SECRET}')"), timeout=60)


@pytest.mark.parametrize("endpoint,check", [
    ("http://127.0.0.1:{port}", "speaks only https"),
    ("https://user:pw@127.0.0.1:{port}", "user name or password"),
    ("https://127.0.0.1:{port}/v1/elsewhere", "path, query or fragment"),
    ("https://127.0.0.1:{port}?x=1", "path, query or fragment"),
    ("ftp://127.0.0.1:{port}", "speaks only https"),
    ("https://bad host name:{port}", "is not a host name or IP address"),
])
def test_a_rewritten_endpoint_is_refused_before_anything_leaves(agent, hostile, endpoint, check):
    host = Listener()
    try:
        proxy = hostile(rewrite_endpoint(endpoint.format(port=host.port)))
        with pytest.raises(ChannelRefused) as exc:
            run_secret(agent)
        assert check in str(exc.value) and "nothing was sent" in str(exc.value)
        assert str(exc.value).startswith("endpoint:")
        assert host.connections == 0 and SECRET.encode() not in bytes(host.received)
        nothing_left(proxy, provisioned=True)
        # completion and inspection never reach it either
        reply = agent.call(agent.ask_if_open("complete", {"code": "pri", "cursor_pos": 3}))
        assert reply is None and host.connections == 0
    finally:
        host.close()
    record("attack", f"endpoint rewritten ({check})")


def test_the_hosts_own_tls_server_is_refused_by_pinning(agent, hostile):
    """The host serves TLS itself (its own certificate) and relays the Keep's certificate: the
    handshake fails the pin before the request is written."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = certificates.self_signed(key, "the host's endpoint")
    server, port, seen = _tls_server(key, cert, lambda request: web.Response(text="forged output"))
    try:
        proxy = hostile(rewrite_endpoint(f"https://127.0.0.1:{port}"))
        with pytest.raises(ChannelRefused, match="pinning: .* did not present the pinned certificate"):
            run_secret(agent)
        assert seen == [] and proxy is not None
    finally:
        server()
    record("attack", "endpoint pointed at the host's own TLS server")


def test_a_byte_relaying_proxy_sees_only_tls(agent, hostile):
    """The host puts a TCP relay in front of the real endpoint: allowed (TLS is end to end), and
    the relay sees no plaintext of the cell."""
    relay = _TcpRelay()

    def via_relay(method, path, body, status):
        if path.endswith("/provision") and status == 200:
            resp = p.ProvisionResponse.from_cbor(body)
            relay.target = Endpoint.parse(resp.endpoint)
            resp.endpoint = f"https://127.0.0.1:{relay.port}"
            return resp.to_cbor(), status
        return body, status
    try:
        hostile(via_relay)
        status = run_secret(agent)
        assert status.get("ok") is True
        assert relay.bytes > 0 and SECRET.encode() not in bytes(relay.seen)
    finally:
        relay.close()
    record("attack", "TCP relay in the middle (sees TLS only)")


def test_redirects_are_never_followed():
    """A peer holding the pinned key that answers 3xx (a Keep talked into it, or a bug) does not
    move the channel anywhere: the answer is an error naming the redirect."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = certificates.self_signed(key, "keep")
    client_key = ec.generate_private_key(ec.SECP256R1())
    client_cert = certificates.self_signed(client_key, "client")
    server, port, seen = _tls_server(
        key, cert, lambda request: web.HTTPTemporaryRedirect("http://127.0.0.1:9/v1/run"),
        client_cert=client_cert)
    try:
        channel = Channel(Endpoint("127.0.0.1", port), cert, client_key, client_cert)

        async def go():
            try:
                return await channel.request("status")
            finally:
                await channel.close()
        with pytest.raises(ChannelRefused, match="redirect: .*307.*never follows redirects"):
            asyncio.run(go())
        assert seen == ["/v1/request"]  # asked once, not followed
    finally:
        server()


def test_endpoint_parsing_accepts_only_host_and_port():
    assert Endpoint.parse("https://127.0.0.1:8443") == Endpoint("127.0.0.1", 8443)
    assert Endpoint.parse("https://[::1]:8443").url == "https://[::1]:8443"
    assert Endpoint.parse("https://keep.example/").port == 443
    for bad in ("http://127.0.0.1:1", "https://127.0.0.1:0", "https://127.0.0.1:70000",
                "https://a@127.0.0.1:1", "https://127.0.0.1:1/x", "https://127.0.0.1:1#f",
                "//127.0.0.1:1", "https://:1", "https://ex ample:1", "x" * 600):
        with pytest.raises(ChannelRefused, match="^endpoint: "):
            Endpoint.parse(bad)


# ---------------------------------------------------------------------- helpers


def _tls_server(key, cert_der, handler, client_cert=None):
    """An aiohttp HTTPS server with ``key``; returns (stop, port, paths seen)."""
    import tempfile
    from pathlib import Path

    from cryptography import x509

    seen: list[str] = []
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with tempfile.TemporaryDirectory() as tmp:
        kp, cp = Path(tmp) / "k.pem", Path(tmp) / "c.pem"
        kp.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()))
        cp.write_bytes(x509.load_der_x509_certificate(cert_der).public_bytes(serialization.Encoding.PEM))
        ctx.load_cert_chain(cp, kp)
    if client_cert is not None:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cadata=client_cert)
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    box: dict = {}

    async def handle(request: web.Request) -> web.StreamResponse:
        seen.append(request.path)
        result = handler(request)
        if isinstance(result, web.HTTPException):
            raise result
        return result

    async def start() -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
        await site.start()
        box["runner"] = runner
        box["port"] = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        ready.set()

    threading.Thread(target=loop.run_forever, daemon=True).start()
    asyncio.run_coroutine_threadsafe(start(), loop)
    ready.wait(10)

    def stop() -> None:
        asyncio.run_coroutine_threadsafe(box["runner"].cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
    return stop, box["port"], seen


class _TcpRelay:
    """Forwards bytes both ways to ``target`` and keeps what it saw."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.target: Endpoint | None = None
        self.seen = bytearray()
        self.bytes = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            assert self.target is not None
            upstream = socket.create_connection((self.target.host, self.target.port))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while chunk := src.recv(65536):
                self.seen += chunk
                self.bytes += len(chunk)
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()
