"""Evidence verification latency per evidence kind, on the real vendor vectors when they are
present (KEEPBOOK_VECTORS, with their collateral for TDX/SGX), else on simulated evidence.  The
baseline is the irreducible floor: the one ECDSA signature check over the report body."""

from __future__ import annotations

import datetime as dt
import os
import time
from pathlib import Path

from .core import Goal, Row, Sample

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
        goal = Goal(5.0, on_ratio=False, unit="ms") if kind == "sev-snp" else None
        out.append(Row(name, "ms", sample, _ecdsa_floor(curve, reps), goal,
                       note=f"{what}; verdict {'ok' if tv.ok else 'not ok (as the vector is)'}",
                       baseline_label=f"one ECDSA-{curve.upper()} signature check (the floor)"))
    return out
