"""`keepbook verify`: exit codes, JSON, policy, bad input — via main() and `python -m`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from keepbook.keep.shared.evidence import detect_kind
from keepbook.kernel.verify_cli import main
from keepbook.keep.inside.simulated_tee import vendor

SNP = "snp/"


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.vectors
def test_snp_hex_report_verifies(vectors, capsys):
    code, out, _ = run(capsys, vectors / SNP / "virtee-sev__tests_certs_data_report_milan.hex",
                       "--certs", vectors / SNP / "virtee-sev__tests_certs_data_vcek_milan.der",
                       "--certs", vectors / SNP / "go-sev-guest__verify_trust_ask_ark_milan.pem")
    assert code == 0, out
    assert "RESULT: VERIFIED" in out


@pytest.mark.vectors
def test_json_output_and_report_data(vectors, capsys, vec):
    ev = vectors / SNP / "routex-client-lua__report-turin-v5.bin"
    certs = vectors / SNP / "routex-client-lua__tests_data_vcek-chain-turin.pem"
    rd = vec(SNP + "routex-client-lua__report-turin-v5.bin")[0x50:0x90].hex()
    code, out, _ = run(capsys, ev, "--certs", certs, "--report-data", rd, "--json")
    doc = json.loads(out)
    assert code == 0 and doc["verified"] is True and doc["kind"] == "sev-snp"
    assert {"name", "status", "reason"} <= set(doc["claims"][0])
    code, out, _ = run(capsys, ev, "--certs", certs, "--report-data", "00" * 64, "--json")
    doc = json.loads(out)
    assert code == 1 and doc["verified"] is False
    assert any(c["name"] == "report_data" and c["status"] == "failed" for c in doc["claims"])


@pytest.mark.vectors
def test_debug_report_fails_by_default_and_policy_allows(vectors, capsys, tmp_path):
    ev = vectors / SNP / "go-sev-guest__verify_testdata_attestation.bin"
    c1 = vectors / SNP / "go-sev-guest__verify_testdata_vcek.testcer"
    c2 = vectors / SNP / "go-sev-guest__verify_trust_ask_ark_milan.pem"
    code, out, _ = run(capsys, ev, "--certs", c1, "--certs", c2)
    assert code == 1 and "debug" in out
    pol = tmp_path / "p.toml"
    pol.write_text('allow_debug = true\nvmpl = 0\n[min_tcb]\nsnp = 5\n')
    code, out, _ = run(capsys, ev, "--certs", c1, "--certs", c2, "--policy", pol)
    assert code == 0, out
    pol.write_text('allow_debug = true\nmeasurement = "' + "00" * 48 + '"\n')
    code, out, _ = run(capsys, ev, "--certs", c1, "--certs", c2, "--policy", pol)
    assert code == 1 and "measurement" in out


@pytest.mark.vectors
def test_tdx_collateral_at(vectors, capsys):
    q = vectors / "tdx" / "dcap-qvl__sample_tdx_quote"
    col = vectors / "tdx" / "dcap-qvl__sample_tdx_quote_collateral.json"
    code, out, _ = run(capsys, q, "--collateral", col)
    assert code == 1 and "collateral_time" in out and "--at" in out
    code, out, _ = run(capsys, q, "--collateral", col, "--at", "2025-06-20T00:00:00Z")
    assert code == 0, out
    assert "UpToDate" in out


@pytest.mark.vectors
def test_sgx_test_root_rejected(vectors, capsys):
    d = vectors / "sgx" / "synthetic-intel-qvl-sample"
    code, out, _ = run(capsys, d / "teekit__sgx_quote.dat", "--certs", d / "teekit__sgx_pckCert.pem",
                       "--certs", d / "teekit__sgx_pckSignChain.pem", "--json")
    doc = json.loads(out)
    chain = next(c for c in doc["claims"] if c["name"] == "chain")
    assert code == 1 and chain["status"] == "failed" and "TEST root" in chain["reason"]


@pytest.mark.vectors
def test_genoa_report_milan_chain_exit_1(vectors, capsys):
    code, out, _ = run(capsys, vectors / SNP / "routex-client-lua__report-genoa-v3.bin",
                       "--certs", vectors / SNP / "routex-client-lua__tests_data_vcek-chain-milan.pem")
    assert code == 1 and "chain" in out


def test_unusable_input_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"hello")
    code, out, err = run(capsys, bad)
    assert code == 2 and "unrecognised evidence" in err
    code, out, err = run(capsys, tmp_path / "missing.bin")
    assert code == 2 and "cannot read" in err
    trunc = tmp_path / "t.bin"
    trunc.write_bytes((2).to_bytes(4, "little") + bytes(1100))
    code, out, err = run(capsys, trunc, "--json")
    assert code == 2 and "truncated" in err and json.loads(out)["verified"] is False
    code, out, err = run(capsys, bad, "--bogus")
    assert code == 2
    ev, _ = vendor.make_evidence("sev-snp", bytes(64), bytes(48))
    f = tmp_path / "sim.bin"
    f.write_bytes(ev)
    garbage = tmp_path / "g.pem"
    garbage.write_bytes(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    code, out, err = run(capsys, f, "--certs", garbage)
    assert code == 2 and "not valid" in err
    code, out, err = run(capsys, f, "--at", "yesterday")
    assert code == 2 and "ISO 8601" in err
    pol = tmp_path / "p.toml"
    pol.write_text("colour = 'blue'\n")
    code, out, err = run(capsys, f, "--policy", pol)
    assert code == 2 and "unknown policy key" in err


def test_simulated_needs_allow_simulated(tmp_path, capsys):
    rd = os.urandom(64)
    for kind, m in (("sev-snp", 48), ("tdx", 48), ("sgx", 32)):
        ev, certs = vendor.make_evidence(kind, rd, bytes(m))
        f = tmp_path / f"{kind}.bin"
        f.write_bytes(ev.hex().encode())          # hex text is accepted too
        assert detect_kind(f.read_bytes()) == kind
        cf = tmp_path / f"{kind}.pem"
        cf.write_bytes(b"".join(_pem(c) for c in certs))   # the whole chain, as a host would send
        args = [f, "--report-data", rd.hex()] + (["--certs", cf] if kind == "sev-snp" else [])
        code, out, _ = run(capsys, *args)
        assert code == 1 and "--allow-simulated" in out
        code, out, _ = run(capsys, *args, "--allow-simulated")
        assert code == 0 and "SIMULATED" in out, out


def _pem(der: bytes) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding
    return x509.load_der_x509_certificate(der).public_bytes(Encoding.PEM)


def test_python_dash_m(tmp_path):
    ev, certs = vendor.make_evidence("sev-snp", bytes(64), bytes(48))
    f = tmp_path / "e.bin"
    f.write_bytes(ev)
    c = tmp_path / "c.der"
    c.write_bytes(certs[0])
    p = subprocess.run([sys.executable, "-m", "keepbook.kernel.verify_cli", str(f), "--certs", str(c),
                        "--allow-simulated", "--json"], capture_output=True, text=True,
                       env={**os.environ}, timeout=60)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["kind"] == "sev-snp"
