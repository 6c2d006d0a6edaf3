"""The sealed dataset stream (keep/shared/dataset_format.py): round trips with both HPKE suites, and every
kind of tampering refused with its reason."""

from __future__ import annotations

import io
import os
import struct

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from keepbook.keep.inside import dataset_opener
from keepbook.keep.shared import dataset_format
from keepbook.kernel import dataset_sealer
from keepbook.keep.shared import protocol, sealing

KEYS = dataset_opener.keep_dataset_keys()
OWNER = ed25519.Ed25519PrivateKey.generate()
DATA = os.urandom(5 * 4096 + 123)


def seal(data=DATA, suite=sealing.DEFAULT_SUITE, owner=OWNER, keys=KEYS, policy=b"", chunk=4096):
    return list(dataset_sealer.seal_stream(io.BytesIO(data), name="patients.csv", recipient=keys[suite][1],
                              suite=suite, owner_key=owner, policy=policy, chunk_size=chunk))


def frames(parts):
    return parts  # seal_stream yields exactly one frame per piece


def refused(parts, keys=KEYS) -> str:
    with pytest.raises(dataset_format.DatasetError) as exc:
        dataset_opener.open_stream(parts, keys)
    return str(exc.value)


@pytest.mark.parametrize("suite", list(sealing.SUITES))
def test_round_trip(suite):
    info, plain = dataset_opener.open_stream(seal(suite=suite, policy=b"[release]\nmax_bytes = 5000\n"), KEYS)
    assert plain == DATA and info.chunks == 6 and info.bytes == len(DATA)
    assert info.policy == b"[release]\nmax_bytes = 5000\n" and info.owner.startswith("sha256:")


def test_ecdsa_owner_and_empty_file():
    owner = ec.generate_private_key(ec.SECP256R1())
    info, plain = dataset_opener.open_stream(seal(b"", owner=owner), KEYS)
    assert plain == b"" and info.chunks == 1 and info.owner_alg == "ecdsa-p256"


def test_streams_in_small_pieces():
    blob = b"".join(seal())
    op = dataset_opener.Opener(KEYS)
    out = b"".join(p for i in range(0, len(blob), 7) for p in op.feed(blob[i:i + 7]))
    op.finish()
    assert out == DATA


def test_tampered_chunk():
    parts = seal()
    parts[2] = parts[2][:20] + bytes([parts[2][20] ^ 1]) + parts[2][21:]
    assert "chunk 1: authentication failed" in refused(parts)


def test_reordered_chunks():
    parts = seal()
    parts[1], parts[2] = parts[2], parts[1]
    assert "chunk 0: authentication failed" in refused(parts)


def test_dropped_chunk():
    parts = seal()
    del parts[3]
    assert "authentication failed" in refused(parts)


def test_truncated_before_the_final_chunk():
    parts = seal()
    assert "truncated" in refused(parts[:3])
    assert "truncated" in refused(parts[:3] + parts[-1:])  # signature without the final chunk


def test_truncated_without_signature_and_mid_frame():
    parts = seal()
    assert "the owner's signature never arrived" in refused(parts[:-1])
    assert "truncated in the middle of a frame" in refused(parts[:-1] + [parts[-1][:10]])


def test_final_flag_flipped_is_caught():
    parts = seal()
    last_chunk = parts[-2]
    parts[-2] = b"C" + last_chunk[1:]  # claim it is not the last one
    assert "authentication failed" in refused(parts)


def test_extended_stream():
    parts = seal()
    assert "extended" in refused(parts + [parts[1]])


def test_wrong_key():
    other = dataset_opener.keep_dataset_keys((sealing.DEFAULT_SUITE,))
    assert "wrong key" in refused(seal(keys=other))


def test_header_edited_after_sealing_is_caught():
    parts = seal(policy=b"[release]\nmax_bytes = 100\n")
    kind, length = dataset_format.FRAME.unpack_from(parts[0])
    header = protocol.loads(parts[0][dataset_format.FRAME.size:])
    header["policy"] = b"[release]\nmax_bytes = 100000\n"  # the analyst wants a looser policy
    body = protocol.dumps(header)
    parts[0] = dataset_format.FRAME.pack(b"H", len(body)) + body
    assert "wrong key" in refused(parts) or "authentication failed" in refused(parts)


def test_wrong_owner_signature():
    parts = seal()
    trailer = protocol.loads(parts[-1][dataset_format.FRAME.size:])
    trailer["signature"] = ed25519.Ed25519PrivateKey.generate().sign(b"something else")
    body = protocol.dumps(trailer)
    parts[-1] = dataset_format.FRAME.pack(b"S", len(body)) + body
    assert "owner signature: does not verify" in refused(parts)


def test_not_a_sealed_dataset():
    assert "does not start with a sealed-dataset header" in refused([dataset_format.FRAME.pack(b"C", 3) + b"abc"])
    assert "header" in refused([dataset_format.FRAME.pack(b"H", 3) + b"abc"])


def test_oversized_frame_is_refused_at_the_header():
    assert "exceeds the limit" in refused([struct.pack(">cI", b"C", 2**31)])


@pytest.mark.parametrize("name", ["../etc", ".hidden", "a/../b", "/abs", "a//b", "a/", "", "x" * 65,
                                  "/".join("d" * 17)])
def test_bad_names(name):
    with pytest.raises(dataset_format.DatasetError):
        dataset_format.check_name(name)


def test_names_may_sit_in_folders():  # %upload DIR keeps the notebook's relative paths
    assert dataset_format.check_name("data/2024/q1.csv") == "data/2024/q1.csv"


def test_seal_spec(tmp_path):
    (tmp_path / "p.csv").write_text("a\n")
    (tmp_path / "pol.toml").write_text("[release]\nmax_bytes = 3000\n")
    (tmp_path / "spec.toml").write_text('data = "p.csv"\npolicy = "pol.toml"\n'
                                        'suite = "mlkem768x25519-hkdfsha256-aes128gcm"\n')
    spec = dataset_sealer.parse_spec(tmp_path / "spec.toml")
    assert spec.name == "p.csv" and spec.policy.startswith(b"[release]") and "mlkem" in spec.suite
    (tmp_path / "bad.toml").write_text('data = "p.csv"\nowner = "x"\n')
    with pytest.raises(dataset_format.DatasetError, match="unknown key"):
        dataset_sealer.parse_spec(tmp_path / "bad.toml")


def test_the_content_digest_is_keyed():
    """The trailer travels in clear: it carries HMAC-SHA-256 under a key from the data key, not
    SHA-256 of the plaintext (which would confirm a guess of small data)."""
    import hashlib

    data = b"yes\n"
    parts = seal(data)
    trailer = protocol.loads(parts[-1][dataset_format.FRAME.size:])
    assert set(trailer) == {"plaintext_mac", "bytes", "chunks", "signature"}
    assert hashlib.sha256(data).digest() not in b"".join(parts)
    info, _ = dataset_opener.open_stream(parts, KEYS)
    assert info.digest == "hmac-sha256:" + trailer["plaintext_mac"].hex()
    assert info.digest != "hmac-sha256:" + seal_digest(data)  # a fresh data key: another digest


def seal_digest(data: bytes) -> str:
    printed: list[str] = []
    list(dataset_sealer.seal_stream(io.BytesIO(data), name="x.csv", recipient=KEYS[sealing.DEFAULT_SUITE][1],
                                    suite=sealing.DEFAULT_SUITE, owner_key=OWNER, digest=printed.append))
    return printed[0].removeprefix("hmac-sha256:")


def test_a_v1_dataset_is_refused_saying_to_seal_it_again():
    parts = seal()
    header = protocol.loads(parts[0][dataset_format.FRAME.size:])
    header["format"] = "keepbook-sealed-dataset/v1"
    body = protocol.dumps(header)
    parts[0] = dataset_format.FRAME.pack(b"H", len(body)) + body
    assert "sealed as keepbook-sealed-dataset/v1" in refused(parts) and "seal it again" in refused(parts)
