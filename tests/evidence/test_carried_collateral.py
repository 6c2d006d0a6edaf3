"""Collateral carried with the evidence (attest_response.collateral): strict on the wire, and a
hardware Keep's TCB is required by default — judged with that collateral."""

from __future__ import annotations

import json
import os

import pytest

from keepbook.keep.shared import protocol
from keepbook.keep.shared.evidence import carried
from keepbook.keep.shared.evidence.trust import ReferenceValues, Status
from keepbook.kernel.attestation import ExpectationBuilder, verify_attestation
from keepbook.kernel.trust_policy import TrustPolicy

T = "tdx/"


def _response(ev: bytes, kind: str, collateral=None, backend="tdx"):
    config = protocol.KeepConfig(backend=backend, profile="staging", limits=dict(protocol.DEFAULT_LIMITS),
                                 policy=b"", runtime={"keepbook": "test"}, keep_id="k1")
    return protocol.AttestResponse(evidence_kind=kind, evidence=ev, certs=[], hpke_suite="x25519-hkdfsha256-aes128gcm",
                                   hpke_public_key=bytes(32), config=config.to_cbor(),
                                   nonce=bytes(32), collateral=collateral)


def test_collateral_field_is_optional_and_strict():
    r = _response(b"e", "nil", backend="nil")
    assert protocol.AttestResponse.from_cbor(r.to_cbor()).collateral is None
    r = _response(b"e", "nil", collateral=[b"part"], backend="nil")
    assert protocol.AttestResponse.from_cbor(r.to_cbor()).collateral == [b"part"]
    for bad, why in (([1], "expected bytes"), ([b""], "expected bytes"),
                     ([b"x" * (protocol.MAX_COLLATERAL_PART + 1)], "expected bytes"),
                     ([b"x"] * 17, "exceeds the limit"),
                     ([b"x" * protocol.MAX_COLLATERAL_PART] * 5, "exceed the limit"), ("text", "array")):
        d = _response(b"e", "nil", backend="nil").to_dict()
        d["collateral"] = bad
        with pytest.raises(protocol.ProtocolError, match=why):
            protocol.AttestResponse.from_cbor(protocol.dumps(d))


@pytest.mark.vectors
def test_hardware_keep_requires_tcb_status(vec):
    ev = vec(T + "dcap-qvl__sample_tdx_quote")
    expect = (ExpectationBuilder().nonce(bytes(32)).requested(protocol.CreateKeep(backend="tdx"))
              .keep_id("k1").trust_policy(TrustPolicy()).build())
    res = verify_attestation(_response(ev, "tdx"), expect)
    tv = res.vector
    assert {"tcb_status", "tdx_module", "qe_identity", "crl", "collateral_time"} <= tv.required
    names = [c.name for c in tv.failures]
    assert "tcb_status" in names and "required but unverified" in \
        next(c for c in tv.failures if c.name == "tcb_status").reason
    raw = json.loads(vec(T + "dcap-qvl__sample_tdx_quote_collateral.json"))
    parts = [json.dumps(raw).encode()]          # what a host's PCS cache hands over
    res = verify_attestation(_response(ev, "tdx", collateral=parts), expect)
    assert res.vector.get("tcb_status").status is Status.VERIFIED
    assert res.vector.get("tdx_module").status is Status.VERIFIED
    # archived collateral: the current time is past its nextUpdate, and that is required too
    assert "collateral_time" in [c.name for c in res.vector.failures]


@pytest.mark.vectors
def test_garbage_collateral_fails_a_claim_not_the_client(vec):
    ev = vec(T + "dcap-qvl__sample_tdx_quote")
    tv = carried.verify("tdx", ev, certs=[], collateral=[b"{not json"], reference=ReferenceValues())
    c = tv.get("collateral")
    assert c.status is Status.FAILED and "does not parse" in c.reason and not tv.ok


def test_simulated_keep_does_not_require_collateral():
    from keepbook.keep.inside.simulated_tee import vendor
    from keepbook.keep.shared.evidence import simulated_roots
    ev, certs = vendor.make_evidence("tdx", os.urandom(64), bytes(48))
    tv = carried.verify("tdx", ev, certs=certs, collateral=None, reference=ReferenceValues(),
                        simulated_roots=simulated_roots.simulated_root_digests("tdx"))
    assert tv.ok and tv.get("tcb_status").status is Status.UNVERIFIED
