"""The dcap-qvl comparison rows: present whether or not dcap-qvl is installed, and saying which."""

from __future__ import annotations

import sys

from keepbook.bench import SUITES, verify


def test_rows_say_plainly_when_dcap_qvl_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "dcap_qvl", None)      # import fails
    rows = verify.dcap_qvl_rows(1)
    assert [r.name for r in rows] == ["verify_tdx_vs_dcap_qvl_ratio", "verify_sgx_vs_dcap_qvl_ratio"]
    assert all("dcap-qvl is NOT installed" in r.note and r.value is None for r in rows)
    names = {n for n, _, _ in SUITES["verify"]}
    assert {r.name for r in rows} <= names
