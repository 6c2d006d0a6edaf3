"""The keep manager's collateral cache (--collateral-dir): it finds the operator's PCS collateral
by the quote's FMSPC and attaches it to a hardware Keep's attest answer; the client then judges
the TCB with it — and collateral a hostile host altered, swapped or let go stale fails the claim
it touches.  The host decides nothing: every check is the client's."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import os
import types
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from keepbook.keep.host import backends as backends_mod
from keepbook.keep.host.collateral_cache import CollateralCache, dcap_fmspc
from keepbook.keep.host.keepmgr import KeepManager, KeepRecord
from keepbook.keep.shared import protocol
from keepbook.keep.shared.evidence import carried
from keepbook.keep.shared.evidence.trust import ReferenceValues, Status
from keepbook.kernel.attestation import ExpectationBuilder, verify_attestation
from keepbook.kernel.trust_policy import TrustPolicy
from tests.conftest import Manager
from tests.support.http import http

VECTORS = Path(os.environ.get("KEEPBOOK_VECTORS", Path(__file__).resolve().parents[2].parent / "shared" / "vectors"))
TDX_Q, TDX_C = "tdx/dcap-qvl__sample_tdx_quote", "tdx/dcap-qvl__sample_tdx_quote_collateral.json"
OLD_Q, OLD_C = "tdx/dcap-qvl__sample_tdx_quote_outdated", "tdx/dcap-qvl__sample_tdx_quote_outdated_collateral.json"
SGX_Q, SGX_C = "sgx/dcap-qvl__sample_sgx_quote", "sgx/dcap-qvl__sample_sgx_quote_collateral.json"
G = "tdx/go-tdx-guest__testing_"
RAW = [G + "testdata_sample_tcbInfo_response", G + "testdata_sample_tcbinfo_response_v5",
       G + "testdata_sample_qeIdentity_response", G + "test_cases.go__pckCrlIssuerChain.pem",
       G + "test_cases.go__qeIdentityIssuerChain.pem", G + "test_cases.go__tcbInfoIssuerChain.pem",
       G + "testdata_pckcrl", G + "testdata_rootcrl.der"]
#: inside the validity of the dcap-qvl sample collateral (2025-06-19 .. 2025-07-19)
AT = dt.datetime(2025, 6, 25, tzinfo=dt.timezone.utc)
NONCE = bytes(range(32))


@pytest.fixture(scope="module")
def vec():
    if not (VECTORS / "PROVENANCE.md").exists():
        pytest.skip(f"real attestation vectors not found at {VECTORS} (set KEEPBOOK_VECTORS)")
    return lambda rel: (VECTORS / rel).read_bytes()


def _dir(tmp_path: Path, vec, files: dict[str, bytes | str]) -> Path:
    d = tmp_path / "collateral"
    d.mkdir(exist_ok=True)
    for name, src in files.items():
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_bytes(vec(src) if isinstance(src, str) else src)
    return d


def _names(parts) -> list[str]:
    return [p.path.name for p in parts]


@pytest.mark.vectors
def test_cache_finds_the_bundle_for_each_quotes_fmspc(tmp_path, vec):
    d = _dir(tmp_path, vec, {"tdx.json": TDX_C, "sub/old.json": OLD_C, "sgx.json": SGX_C,
                             "notes.txt": b"fetched on Monday", "huge.bin": b"x" * (70 * 1024)})
    cache = CollateralCache(d)
    assert set(cache.problems) == {"notes.txt", "huge.bin"}
    assert "larger than one collateral part" in cache.problems["huge.bin"]
    assert _names(cache.parts_for("tdx", vec(TDX_Q))[0]) == ["tdx.json"]
    assert _names(cache.parts_for("tdx", vec(OLD_Q))[0]) == ["old.json"]
    assert _names(cache.parts_for("sgx", vec(SGX_Q))[0]) == ["sgx.json"]
    parts, note = cache.parts_for("tdx", vec("tdx/trustee__deps_verifier_test_data_az-tdx-vtpm_td-quote.bin"))
    assert parts == [] and "FMSPC 00806F050000" in note            # the operator learns what to fetch
    assert cache.parts_for("tdx", b"not a quote") == ([], "the quote carries no PCK certificate to find its FMSPC")
    assert cache.parts_for("sev-snp", b"")[0] == []                # no AMD CRL in this cache


@pytest.mark.vectors
def test_raw_pcs_bodies_are_matched_by_fmspc_and_the_tcb_judged(tmp_path, vec):
    d = _dir(tmp_path, vec, {Path(f).name: f for f in RAW})
    cache = CollateralCache(d)
    assert not cache.problems
    quote = vec(G + "testdata_tdx_prod_quote_SPR_E4.dat")
    assert dcap_fmspc(quote) == "50806f000000"
    parts, note = cache.parts_for("tdx", quote)
    names = _names(parts)
    assert names[:2] == [Path(RAW[0]).name, Path(RAW[2]).name] and not note   # its TCB info, TD_QE
    assert Path(RAW[1]).name not in names                            # the other FMSPC's TCB info
    assert {Path(f).name for f in RAW[3:]} <= set(names)             # chains and CRLs go along
    tv = carried.verify("tdx", quote, certs=[], collateral=[p.data for p in parts],
                        reference=ReferenceValues(), at=dt.datetime(2023, 6, 20, tzinfo=dt.timezone.utc))
    for name in ("qe_identity", "crl", "collateral_time", "tdx_module"):
        assert tv.get(name).status is Status.VERIFIED, (name, tv.get(name).reason)
    # judged: this platform's TCB is below every level of Intel's TCB info
    assert tv.get("tcb_status").status is Status.FAILED and "below every level" in tv.get("tcb_status").reason
    assert _names(cache.parts_for("tdx", vec(G + "testdata_quote_v5_sample.dat"))[0])[0] == Path(RAW[1]).name


@pytest.mark.vectors
def test_the_newest_tcb_info_wins_and_the_folder_is_reread(tmp_path, vec):
    d = _dir(tmp_path, vec, {"a.json": TDX_C})
    cache = CollateralCache(d)
    newer = json.loads(vec(TDX_C))
    newer["tcb_info"] = newer["tcb_info"].replace('"issueDate":"2025-06-19T10:16:03Z"',
                                                  '"issueDate":"2025-06-24T10:16:03Z"')
    assert newer["tcb_info"] != json.loads(vec(TDX_C))["tcb_info"]
    (d / "b.json").write_text(json.dumps(newer))                     # no restart needed
    assert _names(cache.parts_for("tdx", vec(TDX_Q))[0]) == ["b.json"]
    # ... and since the host changed signed bytes, the client refuses it, naming the claim
    tv = carried.verify("tdx", vec(TDX_Q), certs=[], collateral=[(d / "b.json").read_bytes()],
                        reference=ReferenceValues(), at=AT)
    assert tv.get("tcb_status").status is Status.FAILED and "signature" in tv.get("tcb_status").reason


def _amd_crl() -> bytes:
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ARK-Milan"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Advanced Micro Devices")])
    now = dt.datetime.now(dt.timezone.utc)
    return (x509.CertificateRevocationListBuilder().issuer_name(name).last_update(now)
            .next_update(now + dt.timedelta(days=30)).sign(key, hashes.SHA384()).public_bytes(Encoding.DER))


@pytest.mark.vectors
def test_amd_crls_go_with_snp_answers_intel_ones_with_dcap(tmp_path, vec):
    d = _dir(tmp_path, vec, {"amd.crl": _amd_crl(), "root.crl": G + "testdata_rootcrl.der"})
    cache = CollateralCache(d)
    assert _names(cache.parts_for("sev-snp", b"")[0]) == ["amd.crl"]
    assert "amd.crl" not in _names(cache.parts_for("tdx", vec(G + "testdata_tdx_prod_quote_SPR_E4.dat"))[0])


# -- the keep manager relays it -----------------------------------------------------------------

def _relay(mgr: KeepManager, backend: str, answer: protocol.AttestResponse) -> protocol.AttestResponse:
    """POST /v1/keeps/k1/attest to an in-process keep manager whose Keep (of ``backend``) answers
    ``answer`` — the Keep is faked, the manager's HTTP handling and attaching are real."""
    rec = KeepRecord(info=protocol.KeepInfo(id="k1", backend=backend, profile="staging", state="ready",
                                            created=0.0),
                     owner=hashlib.sha256(b"tok").hexdigest(), proc=types.SimpleNamespace(returncode=0))
    mgr.keeps["k1"] = rec

    async def keep_answers(rec, msg, expect, timeout):
        assert isinstance(msg, protocol.AttestRequest)
        return answer
    mgr._call = keep_answers  # type: ignore[method-assign]

    async def run() -> protocol.AttestResponse:
        async with TestClient(TestServer(mgr.app())) as client:
            r = await client.post("/v1/keeps/k1/attest", data=protocol.AttestRequest(nonce=NONCE).to_cbor(),
                                  headers={"Authorization": "Bearer tok", "Content-Type": "application/cbor"})
            assert r.status == 200, await r.read()
            return protocol.AttestResponse.from_cbor(await r.read())
    return asyncio.run(run())


def _answer(evidence: bytes, kind: str, backend: str) -> protocol.AttestResponse:
    config = protocol.KeepConfig(backend=backend, profile="staging", limits=dict(protocol.DEFAULT_LIMITS),
                                 policy=b"", runtime={"keepbook": "test"}, keep_id="k1")
    return protocol.AttestResponse(evidence_kind=kind, evidence=evidence, certs=[], hpke_suite="x25519-hkdfsha256-aes128gcm",
                                   hpke_public_key=bytes(32), config=config.to_cbor(), nonce=NONCE)


def _manager(cache: CollateralCache) -> KeepManager:
    return KeepManager(backends=backends_mod.offered(["tdx", "sgx", "sim-tdx"]), tokens=["tok"],
                       collateral=cache)


@pytest.mark.vectors
@pytest.mark.parametrize("kind,quote,col", [("tdx", TDX_Q, TDX_C), ("sgx", SGX_Q, SGX_C)])
def test_relayed_answer_carries_the_collateral_and_the_client_judges_the_tcb(tmp_path, vec, kind, quote, col):
    events: list[tuple[str, dict]] = []
    cache = CollateralCache(_dir(tmp_path, vec, {"tdx.json": TDX_C, "sgx.json": SGX_C}),
                            log=lambda e, **d: events.append((e, d)))
    resp = _relay(_manager(cache), kind, _answer(vec(quote), kind, kind))
    assert resp.collateral == [vec(col)]
    assert ("collateral-attached", {"keep": "k1", "kind": kind, "parts": 1}) in events
    # with the carried collateral, at a time it was valid, every hardware-required claim holds
    tv = carried.verify(kind, resp.evidence, certs=resp.certs, collateral=resp.collateral,
                        reference=ReferenceValues(accept_tcb_status=("UpToDate", "ConfigurationAndSWHardeningNeeded")),
                        at=AT)
    for name in carried.required_on_hardware(kind):
        assert tv.get(name).status is Status.VERIFIED, (name, tv.get(name).reason)
    # the client's own verification of a hardware Keep judges the TCB with it (today this
    # archived collateral is stale, and the sample quote binds none of our nonces — both named)
    expect = (ExpectationBuilder().nonce(NONCE).requested(protocol.CreateKeep(backend=kind)).keep_id("k1")
              .trust_policy(TrustPolicy()).build())
    vector = verify_attestation(resp, expect).vector
    assert set(carried.required_on_hardware(kind)) <= vector.required
    assert vector.get("qe_identity").status is Status.VERIFIED and vector.get("crl").status is Status.VERIFIED
    assert vector.get("tcb_status").status is not Status.UNVERIFIED    # judged, not skipped
    assert {"collateral_time", "report_data"} <= {c.name for c in vector.failures}


@pytest.mark.vectors
def test_simulated_keeps_get_no_collateral(tmp_path, vec):
    cache = CollateralCache(_dir(tmp_path, vec, {"tdx.json": TDX_C}))
    resp = _relay(_manager(cache), "sim-tdx", _answer(vec(TDX_Q), "tdx", "sim-tdx"))
    assert resp.collateral is None


# -- a hostile host carrying altered, swapped or stale collateral ------------------------------

def _altered(vec, field: str, old: str, new: str) -> bytes:
    doc = json.loads(vec(TDX_C))
    assert doc[field].count(old) >= 1
    doc[field] = doc[field].replace(old, new, 1)
    return json.dumps(doc).encode()


@pytest.mark.vectors
@pytest.mark.parametrize("what,claim,why", [
    ("tcb", "tcb_status", "signature"),
    ("qe", "qe_identity", "signature"),
    ("swapped", "tcb_status", "FMSPC"),
    ("stale", "collateral_time", "expired"),
])
def test_hostile_host_collateral_fails_the_named_claim(tmp_path, vec, what, claim, why):
    files = {"tcb": _altered(vec, "tcb_info", '"UpToDate"', '"OutOfDate"'),
             "qe": _altered(vec, "qe_identity", '"isvprodid":2', '"isvprodid":3'),
             "swapped": vec(OLD_C), "stale": vec(TDX_C)}
    at = dt.datetime(2025, 8, 1, tzinfo=dt.timezone.utc) if what == "stale" else AT
    if what == "swapped":     # a host that sends another platform's collateral for this one
        collateral = [files[what]]
    else:
        cache = CollateralCache(_dir(tmp_path, vec, {"c.json": files[what]}))
        collateral = _relay(_manager(cache), "tdx", _answer(vec(TDX_Q), "tdx", "tdx")).collateral
        assert collateral == [files[what]]
    tv = carried.verify("tdx", vec(TDX_Q), certs=[], collateral=collateral, reference=ReferenceValues(), at=at)
    c = tv.get(claim)
    assert c.status is Status.FAILED and why in c.reason, c.reason
    assert not tv.ok


# -- the command line ---------------------------------------------------------------------------

@pytest.mark.vectors
def test_keepmgr_collateral_dir_option(tmp_path, vec):
    d = _dir(tmp_path, vec, {"tdx.json": TDX_C, "junk.txt": b"??"})
    (tmp_path / "m").mkdir()
    (tmp_path / "m2").mkdir()
    m = Manager(tmp_path / "m", backends="sim-tdx", extra=["--collateral-dir", str(d)])
    try:
        status, body = http("POST", m.url + "/v1/keeps", protocol.CreateKeep(backend="sim-tdx").to_cbor(),
                            token=m.token)
        assert status == 201
        keep = protocol.KeepInfo.from_cbor(body).id
        status, body = http("POST", f"{m.url}/v1/keeps/{keep}/attest",
                            protocol.AttestRequest(nonce=os.urandom(32)).to_cbor(), token=m.token)
        assert status == 200 and protocol.AttestResponse.from_cbor(body).collateral is None
        log = [json.loads(line) for line in m.log.read_text().splitlines()]
        loaded = next(e for e in log if e["event"] == "collateral-loaded")
        assert loaded["files"] == 1 and loaded["unusable"] == 1
        assert any(e["event"] == "collateral-file-unusable" and e["file"] == "junk.txt" for e in log)
    finally:
        m.stop()
    with pytest.raises(Exception, match="is not a folder"):
        Manager(tmp_path / "m2", backends="nil", extra=["--collateral-dir", str(tmp_path / "nope")])
