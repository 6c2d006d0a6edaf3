"""TDX / SGX DCAP quotes: real Intel vectors verify as PROVENANCE.md says; mutations fail the right claim."""

from __future__ import annotations

import datetime as dt
import json
import os
import struct

import pytest

from keepbook.keep.shared.evidence import dcap, pcs
from keepbook.keep.shared.evidence.certs import load_certs
from keepbook.keep.shared.evidence.dcap_verify import SgxVerifier, TdxVerifier
from keepbook.keep.shared.evidence.trust import EvidenceError, ReferenceValues, Status
from keepbook.keep.inside.simulated_tee import vendor
from keepbook.keep.shared.evidence import simulated_roots

UTC = dt.timezone.utc
T, S = "tdx/", "sgx/"
AT_2025 = dt.datetime(2025, 6, 20, tzinfo=UTC)
QUOTES = {  # file → verifier
    T + "dcap-qvl__sample_tdx_quote": TdxVerifier,
    T + "dcap-qvl__sample_tdx_quote_outdated": TdxVerifier,
    T + "go-tdx-guest__testing_testdata_ccel_cos-113-tdx-quote.dat": TdxVerifier,
    T + "go-tdx-guest__testing_testdata_quote_v5_sample.dat": TdxVerifier,
    T + "go-tdx-guest__testing_testdata_tdx_prod_quote_SPR_E4.dat": TdxVerifier,
    S + "dcap-qvl__sample_sgx_quote": SgxVerifier,
    T + "trustee__deps_verifier_test_data_az-tdx-vtpm_td-quote.bin": TdxVerifier,
}
#: quotes whose crypto verifies but that a default policy refuses (PROVENANCE.md; Intel's and
#: Phala's verifiers refuse them too): TD attributes without SEPT_VE_DISABLE
DEFAULT_REFUSED = {
    T + "trustee__deps_verifier_test_data_az-tdx-vtpm_td-quote.bin": ["sept_ve_disable"],
    T + "go-tdx-guest__testing_testdata_tdx_prod_quote_SPR_E4.dat": ["sept_ve_disable"],
}
CRYPTO = ("chain", "qe_report", "qe_binding", "signature")


def st(tv, name):
    c = tv.get(name)
    assert c is not None, name
    return c.status


@pytest.mark.vectors
@pytest.mark.parametrize("quote", sorted(QUOTES))
def test_real_quote_crypto_verifies(vec, quote):
    ev = vec(quote)
    q = dcap.parse(ev)
    assert q.to_bytes() == ev
    tv = QUOTES[quote]().verify(ev)
    for name in CRYPTO:
        assert st(tv, name) is Status.VERIFIED, tv.to_text()
    assert st(tv, "debug") is Status.VERIFIED
    assert tv.protection == "hardware"
    assert [c.name for c in tv.failures] == DEFAULT_REFUSED.get(quote, []), tv.to_text()
    assert st(tv, "tcb_status") is Status.UNVERIFIED  # no collateral → reported, not required
    if quote in DEFAULT_REFUSED:   # only the trust policy relaxes the rule
        assert "allow_sept_ve" in tv.get("sept_ve_disable").reason
        assert QUOTES[quote]().verify(ev, reference=ReferenceValues(allow_sept_ve=True)).ok


@pytest.mark.vectors
def test_tdx_with_collateral_up_to_date(vec):
    col = pcs.load_part(vec(T + "dcap-qvl__sample_tdx_quote_collateral.json"))
    tv = TdxVerifier().verify(vec(T + "dcap-qvl__sample_tdx_quote"), collateral=col, at=AT_2025)
    assert tv.ok, tv.to_text()
    assert "UpToDate" in tv.get("tcb_status").reason
    for n in ("qe_identity", "crl", "collateral_time"):
        assert st(tv, n) is Status.VERIFIED


@pytest.mark.vectors
def test_expired_collateral_without_at_mentions_at(vec):
    col = pcs.load_part(vec(T + "dcap-qvl__sample_tdx_quote_collateral.json"))
    tv = TdxVerifier().verify(vec(T + "dcap-qvl__sample_tdx_quote"), collateral=col)
    c = tv.get("collateral_time")
    assert c.status is Status.FAILED and "--at" in c.reason and not tv.ok


@pytest.mark.vectors
def test_tdx_outdated_no_level_matches(vec):
    col = pcs.load_part(vec(T + "dcap-qvl__sample_tdx_quote_outdated_collateral.json"))
    info = col.tcb_info
    at = info.issue_date + dt.timedelta(hours=1)
    tv = TdxVerifier().verify(vec(T + "dcap-qvl__sample_tdx_quote_outdated"), collateral=col, at=at)
    assert [c.name for c in tv.failures] == ["tcb_status"], tv.to_text()
    assert "no matching TCB level" in tv.get("tcb_status").reason


@pytest.mark.vectors
def test_sgx_with_collateral_configuration_needed(vec):
    col = pcs.load_part(vec(S + "dcap-qvl__sample_sgx_quote_collateral.json"))
    at = col.tcb_info.issue_date + dt.timedelta(hours=1)
    ev = vec(S + "dcap-qvl__sample_sgx_quote")
    tv = SgxVerifier().verify(ev, collateral=col, at=at)
    c = tv.get("tcb_status")
    assert c.status is Status.FAILED and "ConfigurationAndSWHardeningNeeded" in c.reason
    assert "INTEL-SA-00289" in c.reason and "INTEL-SA-00615" in c.reason
    ref = ReferenceValues(accept_tcb_status=("UpToDate", "ConfigurationAndSWHardeningNeeded"),
                          report_data=b"Hello, world!".ljust(64, b"\0"))
    tv = SgxVerifier().verify(ev, collateral=col, at=at, reference=ref)
    assert tv.ok, tv.to_text()


@pytest.mark.vectors
def test_pcs_parts_v5_sample(vec):
    """PCS bodies as served: the signature covers the exact tcbInfo/enclaveIdentity bytes."""
    parts = [vec(T + f) for f in ("go-tdx-guest__testing_testdata_sample_tcbinfo_response_v5",
                                   "go-tdx-guest__testing_testdata_sample_qeIdentity_response",
                                   "go-tdx-guest__testing_test_cases.go__tcbInfoIssuerChain.pem",
                                   "go-tdx-guest__testing_testdata_rootcrl.der",
                                   "go-tdx-guest__testing_testdata_pckcrl")]
    col = pcs.load_parts(parts)
    ev = vec(T + "go-tdx-guest__testing_testdata_quote_v5_sample.dat")
    # the archived TCB info (2026) and QE identity (2023) were never valid at the same time, and
    # the TCB signing certificate given expired in 2025: check at the QE identity's time
    at = col.qe_identity.issue_date + dt.timedelta(hours=1)
    tv = TdxVerifier().verify(ev, collateral=col, at=at)
    assert "UpToDate" in tv.get("tcb_status").reason, tv.to_text()
    assert st(tv, "qe_identity") is Status.VERIFIED
    assert st(tv, "collateral_time") is Status.FAILED
    # a re-serialised tcbInfo (same content, other bytes) no longer verifies
    body = json.loads(parts[0])
    reser = json.dumps(body, indent=1).encode()
    tv = TdxVerifier().verify(ev, collateral=pcs.load_parts([reser, *parts[1:]]), at=at)
    assert st(tv, "tcb_status") is Status.FAILED and "signature" in tv.get("tcb_status").reason


@pytest.mark.vectors
def test_spr_e4_no_level(vec):
    parts = [vec(T + f) for f in ("go-tdx-guest__testing_testdata_sample_tcbInfo_response",
                                   "go-tdx-guest__testing_testdata_sample_qeIdentity_response",
                                   "go-tdx-guest__testing_test_cases.go__tcbInfoIssuerChain.pem")]
    col = pcs.load_parts(parts)
    at = col.tcb_info.issue_date + dt.timedelta(hours=1)
    tv = TdxVerifier().verify(vec(T + "go-tdx-guest__testing_testdata_tdx_prod_quote_SPR_E4.dat"),
                              collateral=col, at=at)
    assert "no matching TCB level" in tv.get("tcb_status").reason
    assert st(tv, "qe_identity") is Status.VERIFIED


# -- test roots are refused ---------------------------------------------------------------------

@pytest.mark.vectors
@pytest.mark.parametrize("kind", ["sgx", "tdx"])
def test_intel_qvl_test_root_refused(vec, kind):
    d = f"{kind}/synthetic-intel-qvl-sample/teekit__{kind}_"
    ev = vec(d + "quote.dat")
    certs = load_certs(vec(d + "pckCert.pem")) + load_certs(vec(d + "pckSignChain.pem")) \
        + load_certs(vec(d + "trustedRootCaCert.pem"))
    v = SgxVerifier() if kind == "sgx" else TdxVerifier()
    tv = v.verify(ev, certs=certs)
    c = tv.get("chain")
    assert c.status is Status.FAILED and "TEST root" in c.reason, tv.to_text()
    assert not tv.ok


# -- mutations --------------------------------------------------------------------------------

def _flip(b: bytes, off: int) -> bytes:
    m = bytearray(b)
    m[off] ^= 1
    return bytes(m)


#: TDX v4 offsets: header 0–47, body 48–631 → signature
TDX_SIGNED = {"header.user_data": 30, "tee_tcb_svn": 48, "mrseam": 64, "td_attributes": 48 + 120,
              "mrtd": 48 + 136, "mrconfigid": 48 + 184, "rtmr0": 48 + 328, "rtmr3": 48 + 328 + 144,
              "report_data": 48 + 520}


@pytest.mark.vectors
@pytest.mark.parametrize("field", sorted(TDX_SIGNED))
def test_tdx_signed_field_mutation(vec, field):
    ev = vec(T + "dcap-qvl__sample_tdx_quote")
    tv = TdxVerifier().verify(_flip(ev, TDX_SIGNED[field]))
    assert st(tv, "signature") is Status.FAILED and not tv.ok


@pytest.mark.vectors
def test_tdx_binding_and_qe_mutations(vec):
    ev = vec(T + "dcap-qvl__sample_tdx_quote")
    q = dcap.parse(ev)
    sig_start = 48 + 584 + 4
    # attestation key: signature fails and the QE binding breaks
    tv = TdxVerifier().verify(_flip(ev, sig_start + 64 + 5))
    assert st(tv, "qe_binding") is Status.FAILED and st(tv, "signature") is Status.FAILED
    # QE report (inside type-6 data): QE report signature fails
    qe_off = sig_start + 128 + 6
    tv = TdxVerifier().verify(_flip(ev, qe_off + 100))
    assert st(tv, "qe_report") is Status.FAILED
    # QE auth data: binding fails
    auth_off = qe_off + 384 + 64 + 2
    tv = TdxVerifier().verify(_flip(ev, auth_off))
    assert st(tv, "qe_binding") is Status.FAILED
    # quote signature itself
    tv = TdxVerifier().verify(_flip(ev, sig_start + 3))
    assert st(tv, "signature") is Status.FAILED
    assert q.qe.cert_type == 5


@pytest.mark.vectors
def test_chain_mutations(vec):
    ev = vec(S + "dcap-qvl__sample_sgx_quote")
    q = dcap.parse(ev)
    pem = q.qe.cert_data
    # drop the root from the embedded chain → still verifies: Intel's root ships with keepbook
    certs = load_certs(pem)
    assert len(certs) == 3
    cut = pem[:pem.rfind(b"-----BEGIN CERTIFICATE-----")]
    tv = SgxVerifier().verify(_replace_cert_data(ev, q, cut))
    assert st(tv, "chain") is Status.VERIFIED and "Intel SGX Root CA" in tv.get("chain").reason
    # drop the intermediate (PCK Processor CA) → chain fails, naming --certs
    blocks = pem.split(b"-----END CERTIFICATE-----")
    leaf_only = blocks[0] + b"-----END CERTIFICATE-----\n"
    ev2 = _replace_cert_data(ev, q, leaf_only)
    tv = SgxVerifier().verify(ev2)
    assert st(tv, "chain") is Status.FAILED and "--certs" in tv.get("chain").reason
    # ... and passing the intermediate with --certs repairs it
    assert SgxVerifier().verify(ev2, certs=[certs[1]]).get("chain").status is Status.VERIFIED


def _replace_cert_data(ev: bytes, q: dcap.Quote, pem: bytes) -> bytes:
    from dataclasses import replace
    return replace(q, qe=replace(q.qe, cert_data=pem), raw=b"").to_bytes()


@pytest.mark.vectors
def test_sgx_signed_field_mutation(vec):
    ev = vec(S + "dcap-qvl__sample_sgx_quote")
    for off in (8, 48, 48 + 64, 48 + 128, 48 + 256, 48 + 320):
        tv = SgxVerifier().verify(_flip(ev, off))
        assert st(tv, "signature") is Status.FAILED, off


@pytest.mark.vectors
def test_collateral_mutations(vec):
    raw = json.loads(vec(T + "dcap-qvl__sample_tdx_quote_collateral.json"))
    ev = vec(T + "dcap-qvl__sample_tdx_quote")
    bad = dict(raw, tcb_info=raw["tcb_info"].replace('"UpToDate"', '"UpToDatE"', 1))
    tv = TdxVerifier().verify(ev, collateral=bad, at=AT_2025)
    assert st(tv, "tcb_status") is Status.FAILED
    bad = dict(raw, qe_identity_signature="00" * 64)
    tv = TdxVerifier().verify(ev, collateral=bad, at=AT_2025)
    assert st(tv, "qe_identity") is Status.FAILED
    crl = bytearray(bytes.fromhex(raw["pck_crl"]))
    crl[-3] ^= 1
    tv = TdxVerifier().verify(ev, collateral=dict(raw, pck_crl=crl.hex()), at=AT_2025)
    assert st(tv, "crl") is Status.FAILED


# -- bad input -------------------------------------------------------------------------------

@pytest.mark.vectors
def test_bad_input(vec):
    ev = vec(T + "dcap-qvl__sample_tdx_quote")
    with pytest.raises(EvidenceError, match="truncated"):
        TdxVerifier().verify(ev[:1000])
    with pytest.raises(EvidenceError, match="version 7"):
        TdxVerifier().verify(struct.pack("<H", 7) + ev[2:])
    with pytest.raises(EvidenceError, match="attestation key type"):
        TdxVerifier().verify(ev[:2] + struct.pack("<H", 9) + ev[4:])
    with pytest.raises(EvidenceError, match="oversized"):
        TdxVerifier().verify(ev + bytes(70000))
    with pytest.raises(EvidenceError, match="not TDX"):
        TdxVerifier().verify(vec(S + "dcap-qvl__sample_sgx_quote"))


# -- simulated -------------------------------------------------------------------------------

@pytest.mark.parametrize("kind,kw", [("tdx", {}), ("tdx", {"version": 5}), ("sgx", {})])
def test_sim_round_trip(kind, kw):
    rd, m = os.urandom(64), os.urandom(32 if kind == "sgx" else 48)
    ev, certs = vendor.make_evidence(kind, rd, m, **kw)
    assert dcap.parse(ev).to_bytes() == ev
    v = TdxVerifier() if kind == "tdx" else SgxVerifier()
    roots = simulated_roots.simulated_root_digests(kind)
    tv = v.verify(ev, simulated_roots=roots, reference=ReferenceValues(report_data=rd, measurement=m))
    assert tv.ok and tv.protection == "simulated" and "SIMULATED" in tv.get("chain").reason
    tv = v.verify(ev)
    assert not tv.ok and tv.get("chain").status is Status.FAILED
    tv = v.verify(vendor.make_evidence(kind, rd, m, debug=True, **kw)[0], simulated_roots=roots)
    assert [c.name for c in tv.failures] == ["debug"]
