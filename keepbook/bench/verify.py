"""Evidence verification latency per evidence kind, on the real vendor vectors when they are
present (KEEPBOOK_VECTORS, with their collateral for TDX/SGX), else on simulated evidence.  The
baseline is the irreducible floor: the one ECDSA signature check over the report body."""

from __future__ import annotations

import datetime as dt
from importlib import metadata
import os
import time
from pathlib import Path

from .core import Row, Sample, goal, not_measured

UTC = dt.timezone.utc


def _vectors() -> Path | None:
    root = Path(__file__).resolve().parents[2]
    d = Path(os.environ.get("KEEPBOOK_VECTORS", root.parent / "shared" / "vectors"))
    return d if (d / "PROVENANCE.md").exists() else None


def _real(kind: str, vec: Path):
    """(evidence, kwargs for verify, what) from the real vectors."""
    from keepbook.keep.shared.evidence import pcs
    from keepbook.keep.shared.evidence.certs import load_certs

    if kind == "sev-snp":
        ev = (vec / "snp/routex-client-lua__report-genoa-v5.bin").read_bytes()
        certs = load_certs((vec / "snp/routex-client-lua__tests_data_vcek-chain-genoa-v5.pem").read_bytes())
        return ev, {"certs": certs}, "real Genoa v5 report + VCEK/ASK/ARK chain"
    sub, name = ("tdx", "dcap-qvl__sample_tdx_quote") if kind == "tdx" else ("sgx", "dcap-qvl__sample_sgx_quote")
    ev = (vec / sub / name).read_bytes()
    col = pcs.load_part((vec / sub / f"{name}_collateral.json").read_bytes())
    at = col.tcb_info.issue_date + dt.timedelta(hours=1)
    return ev, {"collateral": col, "at": at}, f"real {name} + PCS collateral (TCB info, QE identity, CRLs)"


def _simulated(kind: str):
    from keepbook.keep.shared import measurement
    from keepbook.keep.inside.simulated_tee import vendor
    from keepbook.keep.shared.evidence import simulated_roots
    from keepbook.keep.shared.evidence.trust import ReferenceValues

    rd = os.urandom(64)
    meas = measurement.measurement(32 if kind == "sgx" else 48)
    ev, certs = vendor.make_evidence(kind, rd, meas)
    return ev, {"certs": certs, "simulated_roots": simulated_roots.simulated_root_digests(kind),
                "reference": ReferenceValues(report_data=rd, measurement=meas)}, "simulated evidence"


def _ecdsa_floor(curve_name: str, reps: int) -> Sample:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    curve, h = (ec.SECP384R1(), hashes.SHA384()) if curve_name == "p384" else (ec.SECP256R1(), hashes.SHA256())
    key = ec.generate_private_key(curve)
    data = os.urandom(0x2A0)
    sig = key.sign(data, ec.ECDSA(h))
    pub = key.public_key()
    s = Sample()
    for _ in range(reps):
        t = time.perf_counter()
        pub.verify(sig, data, ec.ECDSA(h))
        s.add((time.perf_counter() - t) * 1000)
    return s


def rows(reps: int) -> list[Row]:
    from keepbook.keep.shared.evidence.registry import get_verifier

    vec = _vectors()
    out = []
    for kind, name, curve in (("sev-snp", "verify_snp_ms", "p384"), ("tdx", "verify_tdx_ms", "p256"),
                              ("sgx", "verify_sgx_ms", "p256")):
        ev, kw, what = _real(kind, vec) if vec else _simulated(kind)
        verifier = get_verifier(kind)
        tv = verifier.verify(ev, **kw)  # warm-up (imports, parsing caches) — not timed
        sample = Sample()
        for _ in range(reps):
            t = time.perf_counter()
            verifier.verify(ev, **kw)
            sample.add((time.perf_counter() - t) * 1000)
        out.append(Row(name, "ms", sample, _ecdsa_floor(curve, reps), goal(name),
                       note=f"{what}; verdict {'ok' if tv.ok else 'not ok (as the vector is)'}",
                       baseline_label=f"one ECDSA-{curve.upper()} signature check (the floor)"))
    return out


_QVL_ROWS = (("tdx", "verify_tdx_vs_dcap_qvl_ratio", "dcap-qvl__sample_tdx_quote"),
             ("sgx", "verify_sgx_vs_dcap_qvl_ratio", "dcap-qvl__sample_sgx_quote"))


def dcap_qvl_rows(reps: int) -> list[Row]:
    """keepbook's DCAP verifier beside Phala's dcap-qvl (Rust, PyPI) on the same quote, the
    same collateral and the same time, measured alternately in one run; the note compares the
    two verdicts (TCB status)."""
    try:
        import dcap_qvl  # type: ignore[import-not-found]
    except ImportError:
        return [not_measured(name, "ms", goal(name), "dcap-qvl is NOT installed — "
                             "pip install -e '.[bench]' to compare with it")
                for _, name, _ in _QVL_ROWS]
    vec = _vectors()
    if vec is None:
        return [not_measured(name, "ms", goal(name), "the real vectors (KEEPBOOK_VECTORS) are "
                             "absent: dcap-qvl verifies only real Intel quotes")
                for _, name, _ in _QVL_ROWS]
    from keepbook.keep.shared.evidence.registry import get_verifier

    out = []
    for kind, name, file in _QVL_ROWS:
        ev, kw, _ = _real(kind, vec)
        raw = (vec / kind / f"{file}_collateral.json").read_text()
        qvl_col = dcap_qvl.QuoteCollateralV3.from_json(raw)
        now = int(kw["at"].timestamp())
        verifier = get_verifier(kind)
        tv = verifier.verify(ev, **kw)
        ours = (tv.get("tcb_status").detail or {}).get("status")
        try:
            theirs = dcap_qvl.verify(ev, qvl_col, now).status
        except Exception as exc:  # noqa: BLE001 — dcap-qvl reports a refusal as an exception
            theirs = f"refused ({exc})"
        mine, base = Sample(), Sample()
        for _ in range(reps):
            t = time.perf_counter()
            verifier.verify(ev, **kw)
            mine.add((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            try:
                dcap_qvl.verify(ev, qvl_col, now)
            except Exception:  # noqa: BLE001 — same work either way
                pass
            base.add((time.perf_counter() - t) * 1000)
        same = "same verdict" if ours == theirs else "DIFFERENT verdicts"
        out.append(Row(name, "ms", mine, base, goal(name),
                       note=f"{file} + its collateral at issueDate+1h; TCB status keepbook {ours}, "
                            f"dcap-qvl {theirs} — {same}",
                       baseline_label=f"dcap-qvl {metadata.version('dcap-qvl')} on the same input"))
    return out
