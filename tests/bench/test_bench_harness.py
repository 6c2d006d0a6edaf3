"""The bench harness: its JSON shape and row logic.  No timing is asserted — benchmarks are not
tests (issue 7); only that the harness reports what it measured, in the agreed shape."""

from __future__ import annotations

import json

from keepbook import bench
from keepbook.bench.core import Goal, Row, Sample, not_measured

ROW_KEYS = {"name", "value", "unit", "baseline", "ratio", "goal", "met"}
REQUIRED = {"first_result_cold_s", "first_result_warm_s", "rtt_wat_ratio", "rtt_python_ratio",
            "c_vs_native_ratio", "python_loop_vs_native_ratio", "numpy_pandas_vs_native_ratio",
            "upload_vs_tls_ratio", "verify_snp_ms", "verify_tdx_ms", "verify_sgx_ms",
            "verify_tdx_vs_dcap_qvl_ratio", "verify_sgx_vs_dcap_qvl_ratio",
            "idle_python_keep_mb", "python_keeps_capacity"}


def test_every_required_row_has_a_suite():
    named = {n for rows in bench.SUITES.values() for n, _, _ in rows}
    assert REQUIRED <= named


def test_json_shape_of_a_real_run(tmp_path):
    out = tmp_path / "bench.json"
    assert bench.main(["--quick", "--only", "verify,upload", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert set(data) == {"machine", "rows"}
    assert {"cpu", "cores", "mem_total_gib", "command", "load_before", "load_after"} <= set(data["machine"])
    names = [r["name"] for r in data["rows"]]
    assert {"verify_snp_ms", "verify_tdx_ms", "verify_sgx_ms", "upload_vs_tls_ratio"} <= set(names)
    for row in data["rows"]:
        assert set(row) == ROW_KEYS, row
        assert isinstance(row["unit"], str)
        if row["value"] is None:  # not measured: never a made-up number, and the reason is given
            assert row["met"] is None and row["ratio"] is None
            assert "not measured" in data["machine"]["row_notes"][row["name"]]
        else:
            assert row["value"] > 0 and row["baseline"] > 0
            assert abs(row["ratio"] - row["value"] / row["baseline"]) < 0.01 * row["ratio"]


def test_unknown_suite_is_refused(capsys):
    try:
        bench.main(["--only", "nope"])
    except SystemExit as exc:
        assert exc.code == 2
    assert "unknown suite" in capsys.readouterr().err


def test_goal_applies_to_ratio_or_value():
    r = Row("x_ratio", "ms", Sample([3.0, 4.0, 5.0]), Sample([2.0]), Goal(2.0, on_ratio=True))
    j = r.to_json()
    assert j["value"] == 4.0 and j["baseline"] == 2.0 and j["ratio"] == 2.0 and j["met"] is True
    r = Row("y_s", "s", 0.6, 1.0, Goal(0.5, on_ratio=False, unit="s"))
    assert r.to_json()["met"] is False
    r = Row("cap", "Keeps", 25.0, None, Goal(20, on_ratio=False, at_least=True))
    assert r.to_json()["met"] is True and r.to_json()["ratio"] is None


def test_not_measured_row():
    j = not_measured("upload_vs_tls_ratio", "MiB/s", Goal(0.5, True, at_least=True), "no API").to_json()
    assert j["value"] is None and j["met"] is None and j["goal"] == "≥ 0.5×"


def test_failing_suite_reports_its_rows_as_not_measured(monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("no kernel here")

    from keepbook.bench import verify
    monkeypatch.setattr(verify, "rows", boom)
    result = bench.run(quick=True, only=["verify"], log=lambda *a, **k: None)
    rows = {r["name"]: r for r in result["rows"]}
    assert set(rows) == {"verify_snp_ms", "verify_tdx_ms", "verify_sgx_ms",
                         "verify_tdx_vs_dcap_qvl_ratio", "verify_sgx_vs_dcap_qvl_ratio"}
    assert all(r["value"] is None for r in rows.values())
    assert "no kernel here" in result["machine"]["row_notes"]["verify_snp_ms"]
