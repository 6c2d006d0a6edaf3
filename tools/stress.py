"""`make stress`: the hostile-world suite at full size, then one summary table.

    python tools/stress.py [--fuzz-scale 1.0] [--no-fuzz] [--pytest-args ...]

Runs (1) the atheris fuzzers (tools/fuzz/run.py, >= 10^5 inputs), then (2) tests/hostile at
stress size (KEEPBOOK_STRESS=1: ten times the hypothesis examples, 20 concurrent kernels) together
with the handshake-tampering tests of tests/host, and prints: inputs tried, attacks detected,
unauthorised calls refused, faults survived, abuse contained, load, leaks found, crashes, and the
known bugs (strict xfails).  Exit status 0 only if nothing failed and nothing crashed."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "build" / "stress"
SUITES = ["tests/hostile", "tests/host/test_handshake_tampering.py", "tests/host/test_keepmgr_api.py"]


def run_fuzz(scale: float) -> dict:
    summary = OUT / "fuzz.json"
    subprocess.run([sys.executable, str(ROOT / "tools" / "fuzz" / "run.py"), "--scale", str(scale),
                    "--json", str(summary)], cwd=ROOT)
    return json.loads(summary.read_text()) if summary.exists() else {"total_inputs": 0, "crashes": 1,
                                                                    "engine": "did not run"}


def run_pytest(extra: list[str]) -> tuple[list[dict], list[dict]]:
    report, junit = OUT / "report.jsonl", OUT / "junit.xml"
    report.unlink(missing_ok=True)
    env = {**os.environ, "KEEPBOOK_STRESS": "1", "KEEPBOOK_HOSTILE_REPORT": str(report)}
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-rxXfE", "-p", "no:cacheprovider",
                    f"--junitxml={junit}", *SUITES, *extra], cwd=ROOT, env=env)
    records = [json.loads(line) for line in report.read_text().splitlines()] if report.exists() else []
    cases = []
    if junit.exists():
        for tc in ET.parse(junit).getroot().iter("testcase"):
            outcome = "passed"
            for child in tc:
                if child.tag in ("failure", "error"):
                    outcome = "failed"
                elif child.tag == "skipped":
                    outcome = "xfailed" if "xfail" in (child.get("type") or "") + (child.get("message") or "") \
                        else "skipped"
            cases.append({"file": tc.get("classname", ""), "name": tc.get("name", ""), "outcome": outcome,
                          "message": next((c.get("message", "") for c in tc), "")})
    return records, cases


def summarise(fuzz: dict, records: list[dict], cases: list[dict]) -> tuple[list[tuple[str, str, str]], bool]:
    by = defaultdict(list)
    for r in records:
        by[r["category"]].append(r)
    hyp_inputs = sum(r["count"] for r in by["inputs"])
    tamper = [c for c in cases if "test_handshake_tampering" in c["file"]]
    attacks = by["attack"]
    attacks_ok = sum(r["ok"] for r in attacks) + sum(c["outcome"] == "passed" for c in tamper)
    attacks_all = len(attacks) + len(tamper)
    refused = by["refused"]
    faults = by["fault"]
    fault_names = sorted({r["name"] for r in faults})
    faults_ok = [n for n in fault_names if all(r["ok"] for r in faults if r["name"] == n)]
    abuse = by["abuse"]
    load = by["load"]
    leaks = [r for r in by["leak"] if not r["ok"]]
    failed = [c for c in cases if c["outcome"] == "failed"]
    xfailed = [c for c in cases if c["outcome"] == "xfailed"]
    fuzz_crashes = fuzz.get("crashes", 0)
    fuzz_failed = [c for c in failed if "fuzz" in c["file"]]
    rows = [
        ("fuzz inputs tried", f"{fuzz.get('total_inputs', 0) + hyp_inputs:,}",
         f"atheris {fuzz.get('total_inputs', 0):,} ({fuzz.get('engine')}), hypothesis {hyp_inputs:,}"),
        ("attacks detected", f"{attacks_ok}/{attacks_all}",
         "malicious keep manager (tests/hostile) + handshake tampering (tests/host)"),
        ("unauthorised calls refused", f"{sum(r['ok'] for r in refused)}/{len(refused)}",
         "bad/missing tokens, other users' Keeps, direct Keep connections, TLS"),
        ("faults survived (< 2 s)", f"{len(faults_ok)}/{len(fault_names)}",
         "; ".join(f"{n} {max(r.get('seconds', 0) for r in faults if r['name'] == n):.2f}s"
                   for n in fault_names if n not in faults_ok) or "all within 2 s"),
        ("abuse contained", f"{sum(r['ok'] for r in abuse)}/{len(abuse)}", "loops, memory, output, fork/thread, fds, huge modules"),
        ("load", ", ".join(f"{r.get('kernels')} kernels {'ok' if r['ok'] else 'FAILED'} in {r.get('seconds')} s"
                           for r in load) or "-", "no cross-talk checked below"),
        ("leaks found", str(len(leaks)), "; ".join(r["name"] for r in leaks) or
         "cross-Keep secrets, host-visible files, RSS growth under fuzz"),
        ("crashes", str(fuzz_crashes + len(fuzz_failed)), "fuzz targets that crashed or failed a property"),
        ("tests", f"{sum(c['outcome'] == 'passed' for c in cases)} passed, {len(failed)} failed, "
                  f"{len(xfailed)} known bugs (strict xfail)", ""),
    ]
    ok = not failed and not fuzz_crashes and not leaks
    return rows, ok


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fuzz-scale", type=float, default=1.0)
    ap.add_argument("--no-fuzz", action="store_true")
    ap.add_argument("pytest_args", nargs="*")
    args = ap.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    fuzz = {"total_inputs": 0, "crashes": 0, "engine": "skipped"} if args.no_fuzz else run_fuzz(args.fuzz_scale)
    records, cases = run_pytest(args.pytest_args)
    rows, ok = summarise(fuzz, records, cases)
    width = max(len(r[0]) for r in rows)
    print("\n" + "=" * 30 + " keepbook: hostile world " + "=" * 30)
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:<22} {note}")
    for t in fuzz.get("targets", []):
        if t.get("crashed"):
            print(f"  FUZZ CRASH: {t['target']}: {t['reason']}")
    for c in cases:
        if c["outcome"] == "xfailed":
            print(f"  known bug: {c['name']}: {c['message'][:160]}")
        if c["outcome"] == "failed":
            message = c["message"]
            cut = message.find("FOUND BY FUZZING")
            shown = message[:160] if cut < 0 else message[cut:cut + 800]
            print(f"  FAILED: {c['file']}::{c['name']}: {shown}")
    print(f"{'result':<{width}}  {'PASS' if ok else 'FAIL'} in {time.monotonic() - started:.0f} s")
    (OUT / "summary.json").write_text(json.dumps({"rows": rows, "ok": ok}, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
