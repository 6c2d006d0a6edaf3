"""SEV-SNP: real AMD vectors verify as PROVENANCE.md says; every mutation fails the right claim."""

from __future__ import annotations

import os
import struct

import pytest

from keepbook.keep.shared.evidence import snp
from keepbook.keep.shared.evidence.certs import load_certs
from keepbook.keep.shared.evidence.snp_verify import SnpVerifier
from keepbook.keep.shared.evidence.trust import EvidenceError, ReferenceValues, Status
from keepbook.keep.inside.simulated_tee import vendor
from keepbook.keep.shared.evidence import simulated_roots

S = "snp/"
#: report → certificate files, and whether the default policy accepts it (PROVENANCE.md)
CASES = {
    "go-sev-guest__verify_testdata_attestation.bin":
        (["go-sev-guest__verify_testdata_vcek.testcer", "go-sev-guest__verify_trust_ask_ark_milan.pem"], "debug"),
    "virtee-sev__tests_certs_data_report_milan.hex":
        (["virtee-sev__tests_certs_data_vcek_milan.der", "virtee-sev__src_certs_snp_builtin_milan_ask.pem",
          "virtee-sev__src_certs_snp_builtin_milan_ark.pem"], None),
    "routex-client-lua__report-genoa-v3.bin": (["routex-client-lua__tests_data_vcek-chain-genoa.pem"], None),
    "routex-client-lua__report-genoa-v5.bin": (["routex-client-lua__tests_data_vcek-chain-genoa-v5.pem"], None),
    "routex-client-lua__report-milan-v3.bin": (["routex-client-lua__tests_data_vcek-chain-milan.pem"], None),
    "routex-client-lua__report-turin-v5.bin": (["routex-client-lua__tests_data_vcek-chain-turin.pem"], None),
}


def _certs(vec, files):
    return [d for f in files for d in load_certs(vec(S + f))]


def _status(tv, name):
    c = tv.get(name)
    assert c is not None, f"claim {name} missing"
    return c.status


@pytest.mark.vectors
@pytest.mark.parametrize("report", sorted(CASES))
def test_real_report_verifies(vec, report):
    files, expected_failure = CASES[report]
    ev = vec(S + report)
    rep = snp.parse(ev)
    assert rep.to_bytes() == ev                      # the builder is byte-exact
    tv = SnpVerifier().verify(ev, certs=_certs(vec, files))
    for name in ("chain", "signature", "chip_id", "vcek_tcb", "reserved_zero"):
        assert _status(tv, name) is Status.VERIFIED, tv.to_text()
    assert tv.protection == "hardware"
    if expected_failure:
        assert [c.name for c in tv.failures] == [expected_failure]
    else:
        assert tv.ok, tv.to_text()
    assert {f[0] for f in tv.fields} >= {"measurement", "report_data", "chip_id", "reported_tcb"}


@pytest.mark.vectors
def test_certs_in_any_order_and_report_data_binding(vec):
    ev = vec(S + "routex-client-lua__report-genoa-v5.bin")
    certs = list(reversed(_certs(vec, CASES["routex-client-lua__report-genoa-v5.bin"][0])))
    rd = snp.parse(ev).report_data
    tv = SnpVerifier().verify(ev, certs=certs, reference=ReferenceValues(report_data=rd))
    assert tv.ok and "report_data" in tv.required
    tv = SnpVerifier().verify(ev, certs=certs, reference=ReferenceValues(report_data=bytes(64)))
    assert not tv.ok and tv.failures[0].name == "report_data"


@pytest.mark.vectors
def test_genoa_v2_parses_but_has_no_vcek(vec):
    ev = vec(S + "routex-client-lua__report-genoa-v2.bin")
    assert snp.parse(ev).version == 2
    tv = SnpVerifier().verify(ev, certs=load_certs(vec(S + "go-sev-guest__verify_trust_ask_ark_genoa.pem")))
    assert _status(tv, "chain") is Status.FAILED
    assert "kdsintf.amd.com" in tv.get("chain").reason
    assert not tv.ok


@pytest.mark.vectors
def test_genoa_report_with_milan_chain_fails_chain(vec):
    ev = vec(S + "routex-client-lua__report-genoa-v3.bin")
    genoa_vcek = _certs(vec, CASES["routex-client-lua__report-genoa-v3.bin"][0])[0]
    milan = load_certs(vec(S + "go-sev-guest__verify_trust_ask_ark_milan.pem"))
    tv = SnpVerifier().verify(ev, certs=[genoa_vcek, *milan])
    assert _status(tv, "chain") is Status.FAILED and not tv.ok
    # the whole Milan chain (VCEK, ASK, ARK) with a Genoa report: product mismatch
    tv = SnpVerifier().verify(ev, certs=_certs(vec, CASES["routex-client-lua__report-milan-v3.bin"][0]))
    assert _status(tv, "chain") is Status.FAILED
    assert "Genoa" in tv.get("chain").reason and "Milan" in tv.get("chain").reason


@pytest.mark.vectors
def test_vlek_chain_parses(vec):
    for f in ("go-sev-guest__verify_trust_ask_ark_milan_vlek.pem", "go-sev-guest__verify_trust_ask_ark_genoa_vlek.pem",
              "go-sev-guest__verify_trust_ask_ark_turin_vlek.pem", "go-sev-guest__verify_trust_ask_ark_turin_vcek.pem"):
        assert len(load_certs(vec(S + f))) == 2


# -- mutations ------------------------------------------------------------------------------------

def _flip(ev: bytes, off: int, n: int = 1) -> bytes:
    b = bytearray(ev)
    for i in range(off, off + n):
        b[i] ^= 0x01
    return bytes(b)


#: every signed field (offset of its first byte) → the report must fail ``signature``
SIGNED_FIELDS = {
    "version": 0x00, "guest_svn": 0x04, "policy": 0x08, "family_id": 0x10, "image_id": 0x20,
    "vmpl": 0x30, "current_tcb": 0x38, "platform_info": 0x40, "flags": 0x48,
    "report_data": 0x50, "measurement": 0x90, "host_data": 0xC0, "id_key_digest": 0xE0,
    "author_key_digest": 0x110, "report_id": 0x140, "report_id_ma": 0x160,
    "reported_tcb": 0x180, "cpuid": 0x188, "chip_id": 0x1A0, "committed_tcb": 0x1E0,
    "current_version": 0x1E8, "committed_version": 0x1EC, "launch_tcb": 0x1F0,
    "mit_vectors": 0x1F8, "reserved_signed": 0x210,
}


@pytest.mark.vectors
@pytest.mark.parametrize("report", ["routex-client-lua__report-genoa-v5.bin",
                                    "virtee-sev__tests_certs_data_report_milan.hex",
                                    "routex-client-lua__report-turin-v5.bin"])
@pytest.mark.parametrize("field", sorted(SIGNED_FIELDS))
def test_mutated_signed_field_fails_signature(vec, report, field):
    ev = vec(S + report)
    certs = _certs(vec, CASES[report][0])
    mutated = _flip(ev, SIGNED_FIELDS[field])
    try:
        tv = SnpVerifier().verify(mutated, certs=certs)
    except EvidenceError as e:          # a flipped version is unusable input — also a rejection
        assert field == "version" and "version" in str(e)
        return
    assert _status(tv, "signature") is Status.FAILED, (field, tv.to_text())
    assert not tv.ok


@pytest.mark.vectors
@pytest.mark.parametrize("off", [0x330, 0x400, 0x49F])
def test_mutated_unsigned_region_fails_reserved_zero(vec, off):
    ev = vec(S + "routex-client-lua__report-milan-v3.bin")
    tv = SnpVerifier().verify(_flip(ev, off), certs=_certs(vec, CASES["routex-client-lua__report-milan-v3.bin"][0]))
    assert _status(tv, "signature") is Status.VERIFIED     # not covered by the signature …
    assert _status(tv, "reserved_zero") is Status.FAILED   # … but must be zero
    assert not tv.ok


@pytest.mark.vectors
@pytest.mark.parametrize("off", [0x2A0, 0x2E8 + 10])
def test_mutated_signature_fails(vec, off):
    ev = vec(S + "routex-client-lua__report-milan-v3.bin")
    tv = SnpVerifier().verify(_flip(ev, off), certs=_certs(vec, CASES["routex-client-lua__report-milan-v3.bin"][0]))
    assert _status(tv, "signature") is Status.FAILED


@pytest.mark.vectors
def test_chain_mutations(vec):
    ev = vec(S + "routex-client-lua__report-milan-v3.bin")
    vcek, ask, ark = _certs(vec, CASES["routex-client-lua__report-milan-v3.bin"][0])
    v = SnpVerifier()
    # missing ASK: fails naming --certs; missing ARK: AMD's ARKs ship with keepbook
    tv = v.verify(ev, certs=[vcek, ark])
    assert _status(tv, "chain") is Status.FAILED and "--certs" in tv.get("chain").reason
    tv = v.verify(ev, certs=[vcek, ask])
    assert _status(tv, "chain") is Status.VERIFIED and "ARK-Milan" in tv.get("chain").reason
    # a flipped bit in the ASK's signature breaks ASK ← ARK
    bad_ask = ask[:-5] + bytes([ask[-5] ^ 1]) + ask[-4:]
    tv = v.verify(ev, certs=[vcek, bad_ask, ark])
    assert _status(tv, "chain") is Status.FAILED
    # another chip's VCEK (same product): binding and signature fail
    other = load_certs(vec(S + "virtee-sev__tests_certs_data_vcek_milan.der"))[0]
    tv = v.verify(ev, certs=[other, ask, ark])
    assert _status(tv, "signature") is Status.FAILED
    assert _status(tv, "chip_id") is Status.FAILED
    assert _status(tv, "vcek_tcb") is Status.FAILED
    # garbage certificate: unusable input
    with pytest.raises(EvidenceError, match="garbage certificate"):
        v.verify(ev, certs=[b"\x30\x03\x02\x01\x00"])


@pytest.mark.vectors
def test_policy_checks(vec):
    ev = vec(S + "go-sev-guest__verify_testdata_attestation.bin")
    certs = _certs(vec, CASES["go-sev-guest__verify_testdata_attestation.bin"][0])
    v = SnpVerifier()
    assert v.verify(ev, certs=certs, reference=ReferenceValues(allow_debug=True)).ok
    tv = v.verify(ev, certs=certs, reference=ReferenceValues(allow_debug=True, allow_smt=False))
    assert tv.failures[0].name == "policy"
    tv = v.verify(ev, certs=certs, reference=ReferenceValues(allow_debug=True, vmpl=2))
    assert tv.failures[0].name == "vmpl"
    tv = v.verify(ev, certs=certs, reference=ReferenceValues(allow_debug=True, min_tcb={"snp": 8}))
    assert tv.failures[0].name == "tcb" and "snp 5 < 8" in tv.failures[0].reason
    assert v.verify(ev, certs=certs, reference=ReferenceValues(allow_debug=True, min_tcb={"snp": 5})).ok
    tv = v.verify(ev, certs=certs, reference=ReferenceValues(allow_debug=True, measurement=bytes(48)))
    assert tv.failures[0].name == "measurement"


# -- bad input -------------------------------------------------------------------------------

def test_bad_input_is_evidence_error():
    v = SnpVerifier()
    with pytest.raises(EvidenceError, match="truncated"):
        v.verify(bytes(100))
    with pytest.raises(EvidenceError, match="oversized"):
        v.verify(bytes(snp.REPORT_SIZE + 1))
    with pytest.raises(EvidenceError, match="version 4"):
        v.verify(struct.pack("<I", 4) + bytes(snp.REPORT_SIZE - 4))


def test_unknown_signature_algorithm():
    rd, m = os.urandom(64), os.urandom(48)
    ev, certs = vendor.make_evidence("sev-snp", rd, m, signature_algo=2)
    tv = SnpVerifier().verify(ev, certs=certs, simulated_roots=simulated_roots.simulated_root_digests("sev-snp"))
    assert tv.get("signature").status is Status.FAILED and "algorithm" in tv.get("signature").reason


# -- simulated ------------------------------------------------------------------------------

@pytest.mark.parametrize("version", [3, 5])
def test_sim_snp_round_trip(version):
    rd, m = os.urandom(64), os.urandom(48)
    ev, certs = vendor.make_evidence("sev-snp", rd, m, version=version)
    assert len(ev) == snp.REPORT_SIZE and snp.parse(ev).version == version
    assert snp.parse(ev).to_bytes() == ev
    roots = simulated_roots.simulated_root_digests("sev-snp")
    tv = SnpVerifier().verify(ev, certs=certs, simulated_roots=roots,
                              reference=ReferenceValues(report_data=rd, measurement=m))
    assert tv.ok, tv.to_text()
    assert tv.protection == "simulated" and "SIMULATED" in tv.get("chain").reason
    assert "SIMULATED" in tv.label


def test_sim_root_refused_without_policy():
    ev, certs = vendor.make_evidence("sev-snp", bytes(64), bytes(48))
    tv = SnpVerifier().verify(ev, certs=certs)
    assert not tv.ok and tv.get("chain").status is Status.FAILED
    assert tv.protection != "hardware"
    assert "--allow-simulated" in tv.get("chain").reason


def test_sim_debug_fails_debug():
    ev, certs = vendor.make_evidence("sev-snp", bytes(64), bytes(48), debug=True)
    tv = SnpVerifier().verify(ev, certs=certs, simulated_roots=simulated_roots.simulated_root_digests("sev-snp"))
    assert [c.name for c in tv.failures] == ["debug"]


def test_sim_roots_files_private_and_stable(tmp_path):
    made = vendor.ensure_roots("sev-snp")
    assert len(made) == 1
    d = simulated_roots.sim_roots_dir() / "sev-snp"
    assert d.is_dir()
    for p in d.iterdir():
        assert p.stat().st_mode & 0o077 == 0
    a = simulated_roots.simulated_root_digests("sev-snp")
    assert a == made
    vendor.reset_cache()
    assert simulated_roots.simulated_root_digests("sev-snp") == a
