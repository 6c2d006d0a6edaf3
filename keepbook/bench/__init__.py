"""`keepbook bench [--quick] [--json FILE] [--only SUITE,...]`: every cost of keepbook measured
side by side with its baseline in one run (issue 7).  See docs/PERFORMANCE.md.

Benchmarks are not tests: nothing here asserts a time; a suite that cannot run reports its rows
as not measured, with the reason."""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Callable

from . import machine
from .core import Goal, Row, goal, markdown, not_measured, table

#: suite → the rows it produces, with their units (for a suite that fails as a whole)
_ROWS: dict[str, list[tuple[str, str]]] = {
    "startup": [("first_result_cold_s", "s"), ("first_result_warm_s", "s"),
                ("first_result_cold_python_s", "s"), ("first_result_warm_python_s", "s")],
    "roundtrip": [("rtt_wat_ratio", "ms"), ("rtt_python_ratio", "ms")],
    "compute": [("c_vs_native_ratio", "s"), ("c_vs_wasmtime_ratio", "s"),
                ("python_loop_vs_native_ratio", "s"), ("python_bigint_loop_vs_native_ratio", "s"),
                ("python_fib_vs_native_ratio", "s"), ("numpy_pandas_vs_native_ratio", "s")],
    "upload": [("upload_vs_tls_ratio", "MiB/s")],
    "verify": [("verify_snp_ms", "ms"), ("verify_tdx_ms", "ms"), ("verify_sgx_ms", "ms"),
               ("verify_tdx_vs_dcap_qvl_ratio", "ms"), ("verify_sgx_vs_dcap_qvl_ratio", "ms")],
    "memory": [("idle_python_keep_mb", "MB"), ("idle_python_keep_pss_mb", "MB"),
               ("python_keeps_capacity", "Keeps")],
    "vm": [("image_build_s", "s"), ("kvm_first_result_s", "s")],
}
SUITES: dict[str, list[tuple[str, str, Goal | None]]] = {
    suite: [(name, unit, goal(name)) for name, unit in rows] for suite, rows in _ROWS.items()}


def _plan(quick: bool, only: list[str] | None = None) -> dict[str, Callable[[], list[Row]]]:
    from . import compute, memory, roundtrip, startup, upload, verify, vm

    reps = 3 if quick else 7
    extra: dict = {}

    def mem() -> list[Row]:
        rows, info = memory.rows(1 if quick else 3, confirm=0 if quick else 20)
        extra.update(info)
        return rows

    return {
        "verify": lambda: verify.rows(30 if quick else 200) + verify.dcap_qvl_rows(30 if quick else 200),
        "upload": lambda: upload.rows(reps, (64 if quick else 256) * 1024 * 1024),
        "startup": lambda: startup.rows(reps),
        "roundtrip": lambda: roundtrip.rows(20 if quick else 60),
        "compute": lambda: compute.rows(reps),
        "memory": mem,
        # A VM Keep boots for ≈20 s under software emulation: a quick run measures it only when
        # asked for by name (`--quick --only vm`), so that it stays under 2 minutes.
        "vm": (lambda: vm.rows(1 if quick else 3)) if not quick or (only and "vm" in only)
              else lambda: [not_measured(n, u, g, "not in a --quick run (a VM Keep boots for "
                                         "≈20 s under emulation): `keepbook bench --only vm`, "
                                         "or the full run")
                            for n, u, g in SUITES["vm"]],
    }, extra


def run(quick: bool, only: list[str] | None, log=print) -> dict:
    plan, extra = _plan(quick, only)
    desc = machine.describe()
    rows: list[Row] = []
    t0 = time.monotonic()
    for name, fn in plan.items():
        if only and name not in only:
            continue
        t = time.monotonic()
        log(f"[bench] {name} …", file=sys.stderr)
        try:
            rows.extend(fn())
        except Exception as exc:  # one broken suite must not hide the others
            why = f"{name} suite failed: {type(exc).__name__}: {exc}"
            log(traceback.format_exc(), file=sys.stderr)
            rows.extend(not_measured(n, u, g, why) for n, u, g in SUITES[name])
        log(f"[bench] {name} done in {time.monotonic() - t:.1f} s", file=sys.stderr)
    desc.update({
        "load_after": machine.load(),
        "duration_s": round(time.monotonic() - t0, 1),
        "command": "keepbook bench" + (" --quick" if quick else "")
                   + (f" --only {','.join(only)}" if only else ""),
        "quick": quick,
        # Per-row detail that the row shape of issue 7 has no field for.
        "row_notes": {r.name: "; ".join(x for x in (r.note, f"baseline: {r.baseline_label}"
                                                     if r.baseline_label else "") if x)
                      for r in rows},
        "row_samples": {r.name: r.spreads() for r in rows},
        **({"memory_confirm": extra} if extra else {}),
    })
    return {"machine": desc, "rows": [r.to_json() for r in rows], "_rows": rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="keepbook bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (under 2 minutes)")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON here")
    ap.add_argument("--markdown", metavar="FILE", help="also write the table as Markdown here")
    ap.add_argument("--only", metavar="SUITES", help=f"comma-separated subset of: {', '.join(SUITES)}")
    args = ap.parse_args(argv)
    only = [s for s in args.only.split(",") if s] if args.only else None
    unknown = [s for s in only or [] if s not in SUITES]
    if unknown:
        ap.error(f"unknown suite(s) {', '.join(unknown)}; known: {', '.join(SUITES)}")
    result = run(args.quick, only)
    rows = result.pop("_rows")
    m = result["machine"]
    print(f"keepbook bench — {m['cpu']}, {m['cores']} cores, {m['mem_total_gib']} GiB, "
          f"{m['os']}; load {m['load_before']} → {m['load_after']}; {m['duration_s']} s")
    if m["load_before"] and m["cores"] and max(m["load_before"][0], m["load_after"][0]) > 0.5 * m["cores"]:
        print(f"NOTE: the machine was busy (load {m['load_before'][0]} → {m['load_after'][0]} on "
              f"{m['cores']} cores): timings are noisy; re-run when it is quiet.")
    print(table(rows))
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(markdown(rows) + "\n")
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1) + "\n")
        print(f"\nwrote {path}")
    return 0
