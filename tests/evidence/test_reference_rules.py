"""The rules the reference verifiers apply (go-sev-guest verify.go, dcap-qvl verify.rs, Trustee):
each new rule is a named claim, fails on a mutation of a real vector, and says what to do."""

from __future__ import annotations

import datetime as dt
import json
import struct
from dataclasses import replace

import pytest

from keepbook.keep.shared.evidence import azure_hcl, dcap, dcap_collateral, pcs, snp
from keepbook.keep.shared.evidence.certs import load_certs, load_pool
from keepbook.keep.shared.evidence.dcap_verify import PINNED_INTEL_ROOTS, SgxVerifier, TdxVerifier
from keepbook.keep.shared.evidence.pck import parse_pck
from keepbook.keep.shared.evidence.snp_verify import SnpVerifier
from keepbook.keep.shared.evidence.trust import EvidenceError, ReferenceValues, Status

UTC = dt.timezone.utc
S, T, X = "snp/", "tdx/", "sgx/"
VLEK_REPORT = S + "trustee__deps_verifier_test_data_snp_test-vlek-report.bin"
VLEK = S + "trustee__deps_verifier_test_data_snp_test-vlek.der"
ASVK_MILAN = S + "go-sev-guest__verify_trust_ask_ark_milan_vlek.pem"
IN_VLEK_LIFE = dt.datetime(2025, 6, 1, tzinfo=UTC)
HCL = S + "trustee__deps_verifier_test_data_az-snp-vtpm_hcl-report.bin"
HCL_CHAIN = S + "trustee__deps_verifier_test_data_az-snp-vtpm_vcek.pem"
MILAN_REPORT = S + "routex-client-lua__report-milan-v3.bin"
MILAN_CHAIN = S + "routex-client-lua__tests_data_vcek-chain-milan.pem"
TDX_Q, TDX_C = T + "dcap-qvl__sample_tdx_quote", T + "dcap-qvl__sample_tdx_quote_collateral.json"
TDX5_Q = T + "dcap-qvl__sample_tdx_quote_outdated"
TDX5_C = T + "dcap-qvl__sample_tdx_quote_outdated_collateral.json"
AT_2025 = dt.datetime(2025, 6, 20, tzinfo=UTC)


def st(tv, name):
    c = tv.get(name)
    assert c is not None, f"claim {name} missing:\n{tv.to_text()}"
    return c.status


def flip(b: bytes, off: int, mask: int = 1) -> bytes:
    m = bytearray(b)
    m[off] ^= mask
    return bytes(m)


def failed_with(tv, name: str, *words: str) -> None:
    c = tv.get(name)
    assert c is not None and c.status is Status.FAILED, tv.to_text()
    for w in words:
        assert w in c.reason, c.reason
    assert not tv.ok


# == SEV-SNP ======================================================================================

@pytest.mark.vectors
def test_vlek_report_verifies_with_its_vlek(vec):
    certs = load_certs(vec(VLEK)) + load_certs(vec(ASVK_MILAN))
    tv = SnpVerifier().verify(vec(VLEK_REPORT), certs=certs, at=IN_VLEK_LIFE)
    assert tv.ok, tv.to_text()
    assert "SEV-VLEK" in tv.get("chain").reason and "VLEK" in tv.get("signature").reason
    assert st(tv, "chip_id") is Status.UNVERIFIED      # a VLEK is not tied to a chip
    # expired now: the reason says how to verify archived evidence
    tv = SnpVerifier().verify(vec(VLEK_REPORT), certs=certs)
    failed_with(tv, "chain", "--at")


@pytest.mark.vectors
def test_vlek_report_given_only_a_vcek(vec):
    """SIGNING_KEY decides the certificate type: a VCEK is never tried for a VLEK report."""
    certs = load_certs(vec(MILAN_CHAIN))                 # a real VCEK + ASK + ARK (Milan)
    tv = SnpVerifier().verify(vec(VLEK_REPORT), certs=certs, at=IN_VLEK_LIFE)
    failed_with(tv, "chain", "this report is signed by a VLEK; give its VLEK")
    # and the other way round: the VCEK-signed report, given only the VLEK
    tv = SnpVerifier().verify(vec(MILAN_REPORT), certs=load_certs(vec(VLEK)) + load_certs(vec(ASVK_MILAN)),
                              at=IN_VLEK_LIFE)
    failed_with(tv, "chain", "this report is signed by a VCEK; give its VCEK")


@pytest.mark.vectors
def test_signing_key_field_mutation_switches_the_key_type(vec):
    """Flipping SIGNING_KEY 1 → 0 makes the VLEK report claim a VCEK: the VLEK is refused."""
    ev = flip(vec(VLEK_REPORT), 0x48, 0x04)
    certs = load_certs(vec(VLEK)) + load_certs(vec(ASVK_MILAN))
    tv = SnpVerifier().verify(ev, certs=certs, at=IN_VLEK_LIFE)
    failed_with(tv, "chain", "signed by a VCEK; give its VCEK")


@pytest.mark.vectors
@pytest.mark.parametrize("value", [2, 3, 4, 5, 6])
def test_reserved_signing_key_rejected(vec, value):
    ev = bytearray(vec(MILAN_REPORT))
    flags = struct.unpack_from("<I", ev, 0x48)[0] & ~0x1C | value << 2
    struct.pack_into("<I", ev, 0x48, flags)
    tv = SnpVerifier().verify(bytes(ev), certs=load_certs(vec(MILAN_CHAIN)))
    failed_with(tv, "signer_info", f"SIGNING_KEY {value} is a reserved value")
    failed_with(tv, "chain", "reserved")


@pytest.mark.vectors
@pytest.mark.parametrize("bit", [5, 12, 31])
def test_signer_info_reserved_bits(vec, bit):
    ev = flip(vec(MILAN_REPORT), 0x48 + bit // 8, 1 << (bit % 8))
    tv = SnpVerifier().verify(ev, certs=load_certs(vec(MILAN_CHAIN)))
    failed_with(tv, "signer_info", "reserved SIGNER_INFO bits")
    assert st(tv, "signature") is Status.FAILED           # signed field: the signature breaks too


@pytest.mark.vectors
@pytest.mark.parametrize("bit", [26, 40, 63])
def test_policy_must_be_zero_bits(vec, bit):
    ev = flip(vec(MILAN_REPORT), 0x08 + bit // 8, 1 << (bit % 8))
    tv = SnpVerifier().verify(ev, certs=load_certs(vec(MILAN_CHAIN)))
    failed_with(tv, "policy", "bits 63:26 must be zero")


@pytest.mark.vectors
def test_policy_mbz_on_a_genuine_report_is_clean(vec):
    tv = SnpVerifier().verify(vec(MILAN_REPORT), certs=load_certs(vec(MILAN_CHAIN)))
    assert st(tv, "policy") is Status.VERIFIED and st(tv, "signer_info") is Status.VERIFIED
    assert st(tv, "key_cert") is Status.VERIFIED and tv.ok


@pytest.mark.vectors
@pytest.mark.parametrize("old,new,words", [
    (b"SEV-VCEK", b"SEV-VCEL", ["subject common name is SEV-VCEL, expected SEV-VCEK"]),
    (b"Santa Clara", b"Santa Clarb", ["subject", "Santa Clarb"]),
])
def test_key_cert_names(vec, old, new, words):
    vcek, ask, ark = load_certs(vec(MILAN_CHAIN))
    i = vcek.rfind(old)          # the subject comes after the issuer in the TBS
    bad = vcek[:i] + new + vcek[i + len(old):]
    tv = SnpVerifier().verify(vec(MILAN_REPORT), certs=[bad, ask, ark])
    failed_with(tv, "key_cert", *words)
    assert st(tv, "chain") is Status.FAILED              # and the ASK's signature no longer holds


@pytest.mark.vectors
def test_key_cert_version(vec):
    vcek, ask, ark = load_certs(vec(MILAN_CHAIN))
    i = vcek.find(bytes.fromhex("a003020102"))           # [0] EXPLICIT INTEGER 2 = v3
    assert vcek[0:2] == vcek[4:6] == b"\x30\x82" and i == 8
    shorter = lambda ln: (int.from_bytes(ln, "big") - 5).to_bytes(2, "big")  # noqa: E731
    v1 = b"\x30\x82" + shorter(vcek[2:4]) + b"\x30\x82" + shorter(vcek[6:8]) + vcek[i + 5:]
    tv = SnpVerifier().verify(vec(MILAN_REPORT), certs=[v1, ask, ark])
    failed_with(tv, "key_cert", "version is v1, expected v3")


# -- AMD CRL -------------------------------------------------------------------------------------

def _amd_crl(signer_key, issuer_name, revoked_serials=(), *, next_update=None):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.serialization import Encoding
    now = dt.datetime.now(UTC)
    b = (x509.CertificateRevocationListBuilder().issuer_name(issuer_name)
         .last_update(now - dt.timedelta(days=1)).next_update(next_update or now + dt.timedelta(days=30)))
    for serial in revoked_serials:
        b = b.add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(serial)
                                      .revocation_date(now - dt.timedelta(days=1)).build())
    return b.sign(signer_key, hashes.SHA384()).public_bytes(Encoding.DER)


def test_amd_crl_revokes_the_ask():
    """Simulated chain (no AMD-signed CRL exists in the vectors): the ARK's CRL revoking the ASK."""
    import os
    from cryptography import x509
    from keepbook.keep.inside.simulated_tee import vendor
    from keepbook.keep.shared.evidence import simulated_roots
    rd = os.urandom(64)
    ev, certs = vendor.make_evidence("sev-snp", rd, os.urandom(48))
    st_ = vendor.state("sev-snp")
    ark = x509.load_der_x509_certificate(st_["files"]["ark.der"])
    ask = x509.load_der_x509_certificate(st_["files"]["ask.der"])
    roots = simulated_roots.simulated_root_digests("sev-snp")
    v = SnpVerifier()
    clean = _amd_crl(st_["ark_key"], ark.subject)
    tv = v.verify(ev, certs=certs, simulated_roots=roots, collateral=pcs.Collateral(crls=[clean]))
    assert st(tv, "crl") is Status.VERIFIED and tv.ok, tv.to_text()
    revoked = _amd_crl(st_["ark_key"], ark.subject, [ask.serial_number])
    tv = v.verify(ev, certs=certs, simulated_roots=roots, collateral=pcs.Collateral(crls=[revoked]))
    failed_with(tv, "crl", "REVOKED")
    stale = _amd_crl(st_["ark_key"], ark.subject, next_update=dt.datetime.now(UTC) - dt.timedelta(hours=1))
    tv = v.verify(ev, certs=certs, simulated_roots=roots, collateral=pcs.Collateral(crls=[stale]))
    failed_with(tv, "crl", "expired")
    forged = bytearray(clean)
    forged[-5] ^= 1
    tv = v.verify(ev, certs=certs, simulated_roots=roots, collateral=pcs.Collateral(crls=[bytes(forged)]))
    failed_with(tv, "crl", "not signed")


@pytest.mark.vectors
def test_crl_of_another_issuer_is_reported_and_ignored(vec):
    intel_root_crl = vec(T + "go-tdx-guest__testing_testdata_rootcrl.der")
    tv = SnpVerifier().verify(vec(MILAN_REPORT), certs=load_certs(vec(MILAN_CHAIN)),
                              collateral=pcs.Collateral(crls=[intel_root_crl]))
    c = tv.get("crl")
    assert c.status is Status.UNVERIFIED and "Intel SGX Root CA" in c.reason and "ignored" in c.reason
    assert tv.ok, tv.to_text()


# -- serial number 0 --------------------------------------------------------------------------------

@pytest.mark.vectors
def test_serial_zero_certificates_survive_a_strict_cryptography(vec, monkeypatch):
    """cryptography warns it will refuse serial-0 certificates (all of AMD's); force that strict
    behaviour and verify a real report: the tolerant loader must carry it."""
    import warnings
    from keepbook.keep.shared.evidence import certs as certs_mod
    real_loader = certs_mod.x509.load_der_x509_certificate
    refused = []

    def strict(der, *a, **k):            # the announced future: serial ≤ 0 is an error
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cert = real_loader(der, *a, **k)
            serial = cert.serial_number
        if serial <= 0:
            refused.append(der)
            raise ValueError("serial number must be positive (RFC 5280)")
        return cert

    monkeypatch.setattr(certs_mod.x509, "load_der_x509_certificate", strict)
    for cache in ("_PARSED", "_LOADED", "_META"):
        monkeypatch.setattr(certs_mod, cache, {})
    ders = load_certs(vec(MILAN_CHAIN))
    pool = load_pool(ders)
    assert refused == ders[:1], "the strict path was not exercised"   # the VCEK has serial 0
    assert isinstance(pool[0], certs_mod.SerialZeroCertificate) and pool[0].serial_number == 0
    assert certs_mod.der_of(pool[0]) == ders[0]
    tv = SnpVerifier().verify(vec(MILAN_REPORT), certs=ders)
    assert tv.ok, tv.to_text()
    # a forged signature is still caught on this path
    vcek, ask, ark = ders
    tv = SnpVerifier().verify(vec(MILAN_REPORT), certs=[vcek[:-5] + bytes([vcek[-5] ^ 1]) + vcek[-4:], ask, ark])
    assert st(tv, "chain") is Status.FAILED


# -- Azure HCL report -------------------------------------------------------------------------------

@pytest.mark.vectors
def test_hcl_report_verifies_and_binds_the_runtime_claims(vec):
    ev = vec(HCL)
    hcl = azure_hcl.parse(ev)
    assert hcl.hash_name == "SHA-256" and hcl.key("HCLAkPub")["kty"] == "RSA"
    tv = SnpVerifier().verify(ev, certs=load_certs(vec(HCL_CHAIN)))
    assert tv.ok, tv.to_text()
    assert st(tv, "runtime_claims") is Status.VERIFIED and "HCLAkPub" in tv.get("runtime_claims").reason
    assert any(n == "vtpm_key" and "HCLAkPub" in v for n, v, _ in tv.fields)
    want = bytes(64)                      # the vector's user-data is all zero
    assert SnpVerifier().verify(ev, certs=load_certs(vec(HCL_CHAIN)),
                                reference=ReferenceValues(report_data=want)).ok
    tv = SnpVerifier().verify(ev, certs=load_certs(vec(HCL_CHAIN)),
                              reference=ReferenceValues(report_data=b"\1" * 64))
    failed_with(tv, "report_data", "user-data")


@pytest.mark.vectors
def test_hcl_runtime_claims_mutation(vec):
    ev = vec(HCL)
    i = ev.find(b'"kid":"HCLAkPub"') + 30      # inside the vTPM key's modulus
    tv = SnpVerifier().verify(flip(ev, i, 0x02), certs=load_certs(vec(HCL_CHAIN)))
    failed_with(tv, "runtime_claims", "REPORT_DATA is not the SHA-256")
    assert st(tv, "signature") is Status.VERIFIED        # the SNP report itself is untouched
    tv = SnpVerifier().verify(flip(ev, len(ev) - 1), certs=load_certs(vec(HCL_CHAIN)))
    failed_with(tv, "runtime_claims", "after the HCL report")
    tv = SnpVerifier().verify(flip(ev, 32 + 0x90), certs=load_certs(vec(HCL_CHAIN)))   # MEASUREMENT
    assert st(tv, "signature") is Status.FAILED


@pytest.mark.vectors
def test_hcl_bad_input(vec):
    ev = vec(HCL)
    with pytest.raises(EvidenceError, match="sizes disagree"):
        azure_hcl.parse(ev[:1216] + struct.pack("<I", 999) + ev[1220:])
    with pytest.raises(EvidenceError, match="size field"):
        azure_hcl.parse(ev[:8] + struct.pack("<I", 99999) + ev[12:])
    with pytest.raises(EvidenceError, match="hash type"):
        azure_hcl.parse(ev[:1216 + 12] + struct.pack("<I", 9) + ev[1216 + 16:])
    with pytest.raises(EvidenceError, match="not an Azure HCL report"):
        azure_hcl.parse(ev[:100])


# == TDX ==========================================================================================

TD_ATTR = 48 + 120          # TDX v4: header 48, TD_ATTRIBUTES at body offset 120


@pytest.mark.vectors
def test_az_tdx_quote_fails_sept_ve_disable_by_default(vec):
    ev = vec(T + "trustee__deps_verifier_test_data_az-tdx-vtpm_td-quote.bin")
    tv = TdxVerifier().verify(ev)
    failed_with(tv, "sept_ve_disable", "SEPT_VE_DISABLE", "allow_sept_ve")
    assert [c.name for c in tv.failures] == ["sept_ve_disable"]
    tv = TdxVerifier().verify(ev, reference=ReferenceValues(allow_sept_ve=True))
    assert tv.ok and "accepted because your trust policy" in tv.get("sept_ve_disable").reason


@pytest.mark.vectors
def test_sept_ve_disable_mutation(vec):
    ev = flip(vec(TDX_Q), TD_ATTR + 3, 0x10)            # bit 28 cleared
    tv = TdxVerifier().verify(ev)
    failed_with(tv, "sept_ve_disable", "bit 28")
    assert st(tv, "signature") is Status.FAILED


@pytest.mark.vectors
@pytest.mark.parametrize("bit", [1, 7, 8, 27, 29, 32, 62])
def test_reserved_td_attribute_bits(vec, bit):
    ev = flip(vec(TDX_Q), TD_ATTR + bit // 8, 1 << (bit % 8))
    tv = TdxVerifier().verify(ev)
    failed_with(tv, "td_attributes_reserved", "reserved TD attribute bits", "allow_reserved_td_attributes")
    tv = TdxVerifier().verify(ev, reference=ReferenceValues(allow_reserved_td_attributes=True))
    assert st(tv, "td_attributes_reserved") is Status.VERIFIED


@pytest.mark.vectors
def test_optional_td_features_are_not_reserved(vec):
    for bit in (30, 31, 63):      # PKS, KL, PERFMON
        tv = TdxVerifier().verify(flip(vec(TDX_Q), TD_ATTR + bit // 8, 1 << (bit % 8)))
        assert st(tv, "td_attributes_reserved") is Status.VERIFIED


@pytest.mark.vectors
def test_mrservicetd_mutation(vec):
    ev = vec(TDX5_Q)
    q = dcap.parse(ev)
    assert q.body.mrservicetd == bytes(48)
    off = 48 + 6 + 584 + 16                              # v5: descriptor, TD 1.0 part, TEE_TCB_SVN2
    tv = TdxVerifier().verify(flip(ev, off + 5))
    failed_with(tv, "mrservicetd", "service TD", "allow_service_td")
    tv = TdxVerifier().verify(flip(ev, off + 5), reference=ReferenceValues(allow_service_td=True))
    assert st(tv, "mrservicetd") is Status.VERIFIED
    assert st(TdxVerifier().verify(vec(TDX_Q)), "mrservicetd") is Status.VERIFIED   # TDX 1.0


# -- TDX module identity ------------------------------------------------------------------------

def _tdx_with_collateral(vec, ev, quote=TDX_Q, col=TDX_C):
    c = pcs.load_part(vec(col))
    return TdxVerifier().verify(ev, collateral=c, at=c.tcb_info.issue_date + dt.timedelta(hours=1))


@pytest.mark.vectors
def test_tdx_module_identity_verified(vec):
    tv = _tdx_with_collateral(vec, vec(TDX_Q))
    assert st(tv, "tdx_module") is Status.VERIFIED and "TDX_01" in tv.get("tdx_module").reason, tv.to_text()
    assert tv.ok


@pytest.mark.vectors
def test_tdx_module_mrsigner_mutation(vec):
    tv = _tdx_with_collateral(vec, flip(vec(TDX_Q), 48 + 16 + 48 + 3))     # MRSIGNERSEAM
    failed_with(tv, "tdx_module", "MRSIGNER_SEAM", "not Intel's TDX module")


@pytest.mark.vectors
def test_tdx_module_seam_attributes_mutation(vec):
    tv = _tdx_with_collateral(vec, flip(vec(TDX_Q), 48 + 16 + 96))         # SEAMATTRIBUTES
    failed_with(tv, "tdx_module", "SEAM_ATTRIBUTES")


@pytest.mark.vectors
def test_tdx_module_version_without_identity_fails(vec):
    tv = _tdx_with_collateral(vec, flip(vec(TDX_Q), 48 + 1, 0x03))         # module version 1 → 2
    failed_with(tv, "tdx_module", "no identity TDX_02")


@pytest.mark.vectors
def test_tdx_module_svn_below_every_level(vec):
    ev = bytearray(vec(TDX5_Q))
    ev[48 + 6] = 1                                                          # module SVN 7 → 1
    tv = _tdx_with_collateral(vec, bytes(ev), TDX5_Q, TDX5_C)
    failed_with(tv, "tdx_module", "below every TCB level")


@pytest.mark.vectors
def test_tdx_module_status_folds_into_tcb_status(vec):
    """Module SVN 2 on the v5 platform is OutOfDate per TDX_01's levels: tcb_status says so."""
    info = json.loads(json.loads(vec(TDX5_C))["tcb_info"])
    q = dcap.parse(vec(T + "go-tdx-guest__testing_testdata_quote_v5_sample.dat"))
    body = replace(q.body, tee_tcb_svn=bytes([2]) + q.body.tee_tcb_svn[1:])
    claim, status = dcap_collateral._module_identity(info, replace(q, body=body))
    assert claim.status is Status.VERIFIED and status == "OutOfDate"
    assert dcap_collateral.worse("UpToDate", status) == "OutOfDate"


@pytest.mark.vectors
def test_missing_tdx_module_in_tcb_info(vec):
    info = json.loads(json.loads(vec(TDX_C))["tcb_info"])
    del info["tdxModule"]
    claim, _ = dcap_collateral._module_identity(info, dcap.parse(vec(TDX_Q)))
    assert claim.status is Status.FAILED and "no tdxModule" in claim.reason


# -- TCB info / QE identity versions, component counts ----------------------------------------------

@pytest.mark.vectors
def test_sgx_collateral_for_a_tdx_quote(vec):
    """Signed by Intel, but SGX TCB info and QE identity: the version/id rules refuse them."""
    col = pcs.load_part(vec(X + "dcap-qvl__sample_sgx_quote_collateral.json"))
    tv = TdxVerifier().verify(vec(TDX_Q), collateral=col, at=AT_2025)
    failed_with(tv, "tcb_status", "SGX version 3, expected TDX, version 3")
    failed_with(tv, "qe_identity", "QE version 2, expected TD_QE")
    failed_with(tv, "tdx_module", "cannot be used")


@pytest.mark.vectors
def test_tdx_collateral_for_an_sgx_quote(vec):
    col = pcs.load_part(vec(TDX_C))
    tv = SgxVerifier().verify(vec(X + "dcap-qvl__sample_sgx_quote"), collateral=col, at=AT_2025)
    failed_with(tv, "tcb_status", "TDX version 3, expected SGX")
    failed_with(tv, "qe_identity", "TD_QE version 2, expected QE version 2")


def _ctx(vec, kind="tdx", quote=TDX_Q):
    q = dcap.parse(vec(quote))
    pool = load_pool(load_certs(q.qe.cert_data))
    return dcap_collateral.QuoteContext(kind, q, parse_pck(pool[0]), pool, [], PINNED_INTEL_ROOTS)


@pytest.mark.vectors
@pytest.mark.parametrize("which,n", [("sgxtcbcomponents", 15), ("sgxtcbcomponents", 17),
                                     ("tdxtcbcomponents", 8)])
def test_tcb_component_count_mismatch_fails(vec, which, n):
    info = json.loads(json.loads(vec(TDX_C))["tcb_info"])
    comps = info["tcbLevels"][0]["tcb"][which]
    info["tcbLevels"][0]["tcb"][which] = (comps * 2)[:n]
    claim = dcap_collateral._tcb_status(info, _ctx(vec), ReferenceValues(), None)
    assert claim.status is Status.FAILED and "exactly 16" in claim.reason, claim.reason
    # unmutated: UpToDate
    good = json.loads(json.loads(vec(TDX_C))["tcb_info"])
    assert dcap_collateral._tcb_status(good, _ctx(vec), ReferenceValues(), None).status is Status.VERIFIED


@pytest.mark.vectors
def test_tcb_levels_order_does_not_matter(vec):
    info = json.loads(json.loads(vec(TDX_C))["tcb_info"])
    want = dcap_collateral._tcb_status(info, _ctx(vec), ReferenceValues(), None).reason
    info["tcbLevels"].reverse()
    assert dcap_collateral._tcb_status(info, _ctx(vec), ReferenceValues(), None).reason == want


# -- chains and CRLs ----------------------------------------------------------------------------------

@pytest.mark.vectors
@pytest.mark.parametrize("order", ["old-first", "new-first"])
def test_renewed_tcb_signing_certificate_any_order(vec, order):
    """Intel renewed its TCB signing certificate with the same key and serial: the one valid at
    the verification time is used, whatever the order."""
    raw = json.loads(vec(TDX_C))
    old = load_certs(vec(T + "go-tdx-guest__testing_test_cases.go__tcbInfoIssuerChain.pem"))
    new = load_certs(raw["tcb_info_issuer_chain"].encode())
    assert old[0] != new[0]
    chain = old + new if order == "old-first" else new + old
    col = pcs.from_qvl({k: v for k, v in raw.items() if not k.endswith("issuer_chain")})
    col.certs = chain
    tv = TdxVerifier().verify(vec(TDX_Q), collateral=col, at=AT_2025)
    assert tv.ok, tv.to_text()
    assert st(tv, "tcb_status") is Status.VERIFIED and st(tv, "qe_identity") is Status.VERIFIED


@pytest.mark.vectors
def test_pck_crl_of_the_other_ca_is_ignored(vec):
    """The SGX sample's PCK *Processor* CA CRL given for a PCK *Platform* CA chain."""
    raw = json.loads(vec(TDX_C))
    other = json.loads(vec(X + "dcap-qvl__sample_sgx_quote_collateral.json"))["pck_crl"]
    col = pcs.from_qvl(raw)
    col.crls.append(bytes.fromhex(other))
    tv = TdxVerifier().verify(vec(TDX_Q), collateral=col, at=AT_2025)
    assert tv.ok, tv.to_text()
    c = tv.get("crl")
    assert c.status is Status.VERIFIED and "ignored 1 CRL" in c.reason and "Processor CA" in c.reason
