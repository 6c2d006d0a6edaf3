"""`make fuzz`: run every atheris harness for a fixed number of inputs and print what ran.

    python tools/fuzz/run.py [--scale 1.0] [--json build/fuzz/summary.json] [--only NAME]

Each target runs in its own process (libFuzzer exits when done); a crash stops that target,
leaves the input in build/fuzz/, and makes the exit status non-zero.  Without atheris
(`pip install -e '.[fuzz]'`) the same harnesses run under a random-bytes driver, and the table
says so."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
OUT = ROOT / "build" / "fuzz"

#: (name, script, extra args, runs at scale 1) — 170,000 inputs in all
TARGETS = [
    ("decode_any", "fuzz_decoders.py", ["decode_any"], 40_000),
    ("Message.from_cbor (all types)", "fuzz_decoders.py", ["from_cbor"], 40_000),
    ("FrameDecoder", "fuzz_decoders.py", ["frames"], 20_000),
    ("SequenceDecoder", "fuzz_decoders.py", ["sequence"], 20_000),
    ("keepmgr HTTP API", "fuzz_keepmgr.py", [], 25_000),
    ("wasmldr control pipe", "fuzz_wasmldr_pipe.py", [], 12_000),
    ("wasmldr HTTPS endpoints", "fuzz_wasmldr_https.py", [], 13_000),
]


def have_atheris() -> bool:
    try:
        import atheris  # noqa: F401
        return True
    except ImportError:
        return False


def run_target(name: str, script: str, args: list[str], runs: int, budget_s: int) -> dict:
    stats_path = OUT / f"{script}.{'-'.join(args) or 'main'}.stats.json"
    stats_path.unlink(missing_ok=True)
    env = {**os.environ, "KEEPBOOK_FUZZ_STATS": str(stats_path), "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, str(HERE / script), *args, f"-runs={runs}",
           f"-max_total_time={budget_s}", f"-artifact_prefix={OUT}/crash-{script[:-3]}-",
           "-print_final_stats=1"]
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=OUT, env=env, capture_output=True, text=True)
    elapsed = time.monotonic() - started
    log = proc.stdout + proc.stderr
    (OUT / f"{script}.{'-'.join(args) or 'main'}.log").write_text(log)
    done = re.search(r"Done (\d+) runs", log)
    ran = int(done.group(1)) if done else None
    stats = json.loads(stats_path.read_text()) if stats_path.exists() else {}
    crashed = proc.returncode != 0
    if ran is None:
        ran = stats.get("inputs", 0)
    reason = ""
    if crashed:
        m = re.search(r"(AssertionError[^\n]*|Uncaught Python exception:[^\n]*\n[^\n]*|"
                      r"ERROR: libFuzzer:[^\n]*)", log)
        reason = m.group(0) if m else f"exit status {proc.returncode}"
        unit = re.search(r"Test unit written to (\S+)", log)
        found = re.search(r"FOUND BY FUZZING: [^\n]*\n[^\n]*", log)
        if found:
            reason += "\n    " + found.group(0)
        elif unit:
            reason += f"\n    input: {unit.group(1)} ({_preview(OUT / unit.group(1))})"
    rss = (stats.get("rss_kib_start"), stats.get("rss_kib_now"))
    return {"target": name, "runs": ran, "sent": stats.get("inputs", ran), "accepted": stats.get("accepted"),
            "refused": stats.get("refused"), "seconds": round(elapsed, 1), "crashed": crashed,
            "reason": reason, "max_s": stats.get("max_s"),
            "rss_growth_kib": (rss[1] - rss[0]) if None not in rss else None}


def _preview(path: Path) -> str:
    """The first bytes of a crashing input, as the report shows them."""
    try:
        data = path.read_bytes()
    except OSError:
        return "not readable"
    return f"{len(data)} bytes: {data[:64].hex()}{'…' if len(data) > 64 else ''}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every target's input count")
    ap.add_argument("--budget", type=int, default=780, help="seconds for all targets together")
    ap.add_argument("--json", help="write the summary here too")
    ap.add_argument("--only", help="run only targets whose name contains this")
    args = ap.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    engine = "atheris" if have_atheris() else "random-bytes fallback (atheris not installed)"
    targets = [t for t in TARGETS if not args.only or args.only.lower() in t[0].lower()]
    total_runs = sum(int(t[3] * args.scale) for t in targets)
    print(f"fuzzing {len(targets)} targets, {total_runs} inputs, engine: {engine}", flush=True)
    rows = []
    started = time.monotonic()
    for name, script, extra, runs in targets:
        n = max(1, int(runs * args.scale))
        share = max(10, int(args.budget * n / total_runs))
        row = run_target(name, script, extra, n, share)
        rows.append(row)
        print(f"  {name:<32} {row['runs']:>8} inputs  {row['seconds']:>6.1f} s  "
              f"{'CRASH: ' + row['reason'] if row['crashed'] else 'ok'}", flush=True)
    total = sum(r["runs"] or 0 for r in rows)
    crashes = sum(r["crashed"] for r in rows)
    print()
    print(f"{'target':<32} {'inputs':>8} {'sent':>8} {'2xx/ok':>7} {'refused':>8} {'max s':>6} "
          f"{'RSS +KiB':>9}  result")
    for r in rows:
        print(f"{r['target']:<32} {r['runs']:>8} {r['sent'] or 0:>8} {r['accepted'] or 0:>7} "
              f"{r['refused'] or 0:>8} {r['max_s'] or 0:>6} {str(r['rss_growth_kib'] or '-'):>9}  "
              f"{'CRASH' if r['crashed'] else 'ok'}")
    print(f"{'total':<32} {total:>8}   in {time.monotonic() - started:.0f} s, engine {engine}; "
          f"crashes: {crashes}")
    for r in rows:
        if r["crashed"]:
            print(f"\nFUZZING FOUND A BUG in {r['target']}: {r['reason']}", file=sys.stderr)
    summary = {"engine": engine, "total_inputs": total, "crashes": crashes, "targets": rows}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(summary, indent=1))
    return 1 if crashes else 0


if __name__ == "__main__":
    sys.exit(main())
