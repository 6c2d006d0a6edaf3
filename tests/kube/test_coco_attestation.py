"""The client's side of a Keep pod: the init-data digest it computes is a required claim beside
the Kata guest's launch measurement.  No CoCo hardware here: a genuine AMD report (another
guest's, from the vectors) must be refused for its HOST_DATA, and simulated SNP/TDX evidence
carrying the expected value shows the field's claim verified."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from keepbook.keep.shared import pod_keep
from keepbook.keep.shared import protocol as p
from keepbook.keep.shared.evidence import carried, simulated_roots
from keepbook.keep.shared.evidence.trust import ReferenceValues
from keepbook.kernel.attestation import ExpectationBuilder, verify_attestation
from keepbook.kernel.trust_policy import TrustPolicy

IMAGE = "registry.example/keepbook/keep@sha256:" + "ab" * 32
TRUST = TrustPolicy.from_toml(f'keep_container = "{IMAGE}"\n[reference]\nmeasurement = "{"11" * 48}"\n')


def _response(vectors: Path) -> p.AttestResponse:
    from keepbook.keep.shared.evidence.certs import load_certs

    snp = vectors / "snp"
    certs = [c for f in ("go-sev-guest__verify_testdata_vcek.testcer",
                         "go-sev-guest__verify_trust_ask_ark_milan.pem")
             for c in load_certs((snp / f).read_bytes())]
    cfg = p.KeepConfig(backend="coco-snp", profile="staging", limits=dict(p.DEFAULT_LIMITS),
                       policy=b"", runtime={}, keep_id="k1")
    return p.AttestResponse(evidence_kind="sev-snp",
                            evidence=(snp / "go-sev-guest__verify_testdata_attestation.bin").read_bytes(),
                            certs=certs, hpke_suite="x25519-hkdfsha256-aes128gcm", hpke_public_key=bytes(32),
                            config=cfg.to_cbor(), nonce=bytes(32))


def _verify(resp, trust):
    expect = (ExpectationBuilder().nonce(bytes(32)).trust_policy(trust)
              .requested(p.CreateKeep(backend="coco-snp")).build())
    return verify_attestation(resp, expect)


@pytest.fixture
def snp_response():
    vectors = Path(os.environ.get("KEEPBOOK_VECTORS", ""))
    if not (vectors / "snp" / "go-sev-guest__verify_testdata_attestation.bin").is_file():
        pytest.skip("real SEV-SNP vectors not found: set KEEPBOOK_VECTORS")
    return _response(vectors)


@pytest.mark.vectors
def test_a_coco_snp_keep_must_show_our_init_data_digest(snp_response):
    result = _verify(snp_response, TRUST)
    claims = {c.name: c for c in result.vector.claims}
    expected = pod_keep.expected_tee_field(pod_keep.ImageRef.parse(IMAGE), "coco-snp")[1]
    assert claims["init_data"].status.value == "verified"
    assert claims["init_data"].detail["expected"] == expected.hex()
    assert claims["host_data"].status.value == "failed"  # another guest's HOST_DATA
    assert {"init_data", "host_data", "measurement"} <= result.vector.required
    assert not result.ok


@pytest.mark.vectors
def test_without_an_image_or_a_guest_measurement_it_is_refused_saying_what_to_give(snp_response):
    result = _verify(snp_response, TrustPolicy())  # the pin is empty: nothing was published
    claims = {c.name: c for c in result.vector.claims}
    assert claims["init_data"].status.value == "failed"
    assert "keep_container" in claims["init_data"].reason
    assert claims["expected_measurement"].status.value == "failed"
    assert "[reference] measurement" in claims["expected_measurement"].reason
    assert {"init_data", "expected_measurement"} <= result.vector.required


@pytest.mark.parametrize("backend, kind, field", [("coco-snp", "sev-snp", "host_data"),
                                                  ("coco-tdx", "tdx", "mrconfigid")])
def test_the_tee_field_claim_checks_the_expected_value(backend, kind, field):
    from keepbook.keep.inside.simulated_tee import vendor

    claim, value = pod_keep.expected_tee_field(pod_keep.ImageRef.parse(IMAGE), backend)
    assert claim == field
    roots = simulated_roots.simulated_root_digests(kind)
    for carried_value, status in ((value, "verified"), (bytes(len(value)), "failed")):
        evidence, certs = vendor.make_evidence(kind, bytes(64), bytes(48), **{field: carried_value})
        tv = carried.verify(kind, evidence, certs=certs, collateral=None,
                            reference=ReferenceValues(**{field: value}), simulated_roots=roots)
        assert tv.get(field).status.value == status
        assert field in tv.required
