"""Sealed upload throughput vs raw loopback TLS throughput.

The baseline is a TLS 1.3 socket pair on loopback (Python ssl, AES-GCM), sending the same bytes.
The keepbook side needs the client agent's sealed-upload API (issue 5); if this tree has none,
the row says so — it is never estimated."""

from __future__ import annotations

import datetime as dt
import os
import socket
import ssl
import tempfile
import threading
import time
from pathlib import Path

from .core import Row, Sample, goal, not_measured

MiB = 1024 * 1024


def _tls_pair_contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now - dt.timedelta(minutes=1)).not_valid_after(now + dt.timedelta(hours=1))
            .sign(key, hashes.SHA256()))
    with tempfile.TemporaryDirectory() as tmp:
        kp, cp = Path(tmp) / "k.pem", Path(tmp) / "c.pem"
        kp.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()))
        cp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server.minimum_version = ssl.TLSVersion.TLSv1_3
        server.load_cert_chain(cp, kp)
        client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        client.minimum_version = ssl.TLSVersion.TLSv1_3
        client.load_verify_locations(cp)
        client.check_hostname = False
    return server, client


def tls_loopback_mib_s(nbytes: int) -> float:
    """MiB/s of sending nbytes over TLS 1.3 on loopback, handshake excluded."""
    server_ctx, client_ctx = _tls_pair_contexts()
    lsock = socket.create_server(("127.0.0.1", 0))
    port = lsock.getsockname()[1]
    got = [0]

    def serve() -> None:
        conn, _ = lsock.accept()
        with server_ctx.wrap_socket(conn, server_side=True) as s:
            while got[0] < nbytes:
                data = s.recv(1 << 20)
                if not data:
                    break
                got[0] += len(data)
            s.sendall(b"k")

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    chunk = os.urandom(MiB)
    with client_ctx.wrap_socket(socket.create_connection(("127.0.0.1", port))) as c:
        c.do_handshake()
        t = time.perf_counter()
        sent = 0
        while sent < nbytes:
            c.sendall(chunk)
            sent += len(chunk)
        c.recv(1)
        elapsed = time.perf_counter() - t
    th.join(5)
    lsock.close()
    return nbytes / MiB / elapsed


def interleaved_mib_s(nbytes: int, reps: int) -> tuple[Sample, Sample, str]:
    """(sealed upload, raw TLS) MiB/s, taken in turns — one of each per repetition, after one
    untimed warm-up of each — so that both see the same machine load.  The upload is `%upload`
    of an nbytes file into an attested sim-snp Keep: sealed here (HPKE to the Keep's attested
    dataset key, chunked, signed by a throwaway owner key), streamed over the attested channel,
    opened and checked in the Keep, receipt back."""
    from keepbook.kernel import dataset_sealer

    from .lab import Lab, Manager

    owner = dataset_sealer.load_owner_key(dataset_sealer.new_owner_key_pem())  # never the user's own key
    mgr = Manager(backends="sim-snp")
    # every upload stays under /data, and the Keep's files count against its memory limit
    # (its storage meter): room for all of them
    lab = Lab(mgr, "sim-snp", memory_bytes=(reps + 2) * nbytes + 256 * MiB)
    upload, base = Sample(), Sample()
    try:
        lab.new_attested()
        a = lab.agent
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "data.bin"
            with open(src, "wb") as fh:
                for _ in range(nbytes // MiB):
                    fh.write(os.urandom(MiB))
            receipt = a.call(a.upload(src, "warmup.bin", owner_key=owner))  # warm-up
            tls_loopback_mib_s(nbytes)
            for i in range(reps):
                base.add(tls_loopback_mib_s(nbytes))
                t = time.perf_counter()
                receipt = a.call(a.upload(src, f"bench{i}.bin", owner_key=owner))
                upload.add(nbytes / MiB / (time.perf_counter() - t))
        what = f"receipt: {receipt.get('bytes')} bytes, digest checked by the Keep"
    finally:
        lab.stop()
        mgr.stop()
    return upload, base, what


def rows(reps: int, nbytes: int) -> list[Row]:
    label = (f"raw TLS 1.3 on loopback, {nbytes // MiB} MiB, Python ssl, one stream, "
             "taken in turns with the upload")
    from keepbook.kernel.agent import ClientAgent

    if not hasattr(ClientAgent, "upload"):
        base = Sample()
        for _ in range(reps):
            base.add(tls_loopback_mib_s(nbytes))
        row = not_measured("upload_vs_tls_ratio", "MiB/s", goal("upload_vs_tls_ratio"),
                           "the client agent has no sealed-upload API in this tree")
        row.baseline, row.baseline_label = base, label
        return [row]
    value, base, what = interleaved_mib_s(nbytes, reps)
    return [Row("upload_vs_tls_ratio", "MiB/s", value, base, goal("upload_vs_tls_ratio"), baseline_label=label,
                note=f"`%upload` (ClientAgent.upload) of {nbytes // MiB} MiB random bytes into an "
                     f"attested sim-snp Keep: seal + stream + open in the Keep; {what}")]
