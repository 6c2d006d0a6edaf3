"""``contracts`` carries each simulated backend's root certificate (issue 18): bounded, strict —
a malformed one is refused naming the field, as every other wire field is."""

from __future__ import annotations

import datetime as dt

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from keepbook.keep.shared import certificates, protocol as p

KEY = ec.generate_private_key(ec.SECP256R1())
ROOT = certificates.self_signed(KEY, "SIMULATED test root")
LEAF = certificates.build_certificate(certificates.name("leaf", "t"), KEY.public_key(),
                                      certificates.name("SIMULATED test root", "t"), KEY, ca=False,
                                      not_before=dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc),
                                      not_after=dt.datetime(2049, 1, 1, tzinfo=dt.timezone.utc))


def contracts(**backend: object) -> bytes:
    b = {"v": 1, "msg": "backend", "name": "sim-snp", "protection": "simulated",
         "evidence": "sev-snp", "available": True, "note": "", **backend}
    return cbor2.dumps({"v": 1, "msg": "contracts", "backends": [b]})


def test_a_simulated_backend_carries_its_root() -> None:
    got = p.Contracts.from_cbor(contracts(sim_root=ROOT)).backends[0]
    assert got.sim_root == ROOT
    assert p.Contracts.from_cbor(p.Contracts(backends=[got]).to_cbor()).backends[0].sim_root == ROOT
    assert p.Contracts.from_cbor(contracts()).backends[0].sim_root is None   # optional


@pytest.mark.parametrize("fields,why", [
    ({"sim_root": b"\x30\x03garbage"}, "not a DER X.509 certificate"),
    ({"sim_root": b""}, "below the minimum"),
    ({"sim_root": b"\x30" * (p.MAX_SIM_ROOT_BYTES + 1)}, "exceeds the limit"),
    ({"sim_root": "text"}, "expected bytes"),
    ({"sim_root": LEAF}, "not a root certificate"),
    ({"sim_root": ROOT, "protection": "hardware", "name": "snp"}, "only a simulated backend"),
])
def test_a_bad_root_is_refused_naming_the_field(fields: dict, why: str) -> None:
    with pytest.raises(p.RemoteProtocolError) as exc:
        p.Contracts.from_cbor(contracts(**fields))
    assert "sim_root" in exc.value.reason and why in exc.value.reason
