"""Shared plumbing of the atheris harnesses (`make fuzz`): project imports, a fallback driver when
atheris is not installed, per-target statistics for tools/fuzz/run.py."""

from __future__ import annotations

import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

try:  # pragma: no cover - depends on the environment
    import atheris  # type: ignore
except ImportError:  # pragma: no cover
    atheris = None


class Stats:
    """Counts inputs and refusals; every ``every`` inputs (and at the end) writes them as JSON to
    $KEEPBOOK_FUZZ_STATS, which run.py reads (libFuzzer ends the process with exit())."""

    def __init__(self, target: str, every: int = 250):
        self.target = target
        self.every = every
        self.path = os.environ.get("KEEPBOOK_FUZZ_STATS")
        self.data: dict = {"target": target, "inputs": 0, "refused": 0, "accepted": 0,
                           "rss_kib_start": None, "rss_kib_now": None, "max_s": 0.0,
                           "started": time.time()}

    def count(self, accepted: bool, seconds: float = 0.0) -> None:
        self.data["inputs"] += 1
        self.data["accepted" if accepted else "refused"] += 1
        self.data["max_s"] = max(self.data["max_s"], round(seconds, 4))
        if self.data["inputs"] % self.every == 0:
            self.flush()

    def rss(self, kib: int) -> None:
        if self.data["rss_kib_start"] is None:
            self.data["rss_kib_start"] = kib
        self.data["rss_kib_now"] = kib

    def flush(self) -> None:
        if self.path:
            self.data["elapsed_s"] = round(time.time() - self.data["started"], 2)
            tmp = self.path + ".tmp"
            with open(tmp, "w") as fh:
                json.dump(self.data, fh)
            os.replace(tmp, self.path)


def fuzz(test_one_input: Callable[[bytes], None], stats: Stats) -> None:
    """Run under atheris when available (libFuzzer flags in sys.argv, e.g. -runs=N); otherwise a
    random-bytes driver with the same harness, reading -runs=N and printing libFuzzer's
    'Done N runs' line so run.py parses both the same way."""
    if atheris is not None:
        atheris.Setup(sys.argv, test_one_input)
        atheris.Fuzz()
        return
    runs = next((int(a.split("=", 1)[1]) for a in sys.argv if a.startswith("-runs=")), 10000)
    seed = next((int(a.split("=", 1)[1]) for a in sys.argv if a.startswith("-seed=")), 0)
    rng = random.Random(seed)
    started = time.time()
    prefix = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("-artifact_prefix=")), "crash-")
    for _ in range(runs):
        data = rng.randbytes(rng.randrange(1, 512))
        try:
            test_one_input(data)
        except Exception:  # as libFuzzer does: keep the input, say where, fail
            import hashlib
            import traceback

            path = f"{prefix}{hashlib.sha1(data).hexdigest()}"
            Path(path).write_bytes(data)
            traceback.print_exc()
            print(f"==fallback== ERROR: libFuzzer: deadly signal (fallback driver)\n"
                  f"artifact_prefix='{prefix}'; Test unit written to {path}", file=sys.stderr)
            stats.flush()
            sys.exit(1)
    stats.flush()
    print(f"Done {runs} runs in {int(time.time() - started)} second(s) (fallback driver, no atheris)",
          file=sys.stderr)


def split_input(data: bytes) -> tuple[bool, "random.Random", bytes]:
    """(structured?, rng, raw): the first byte picks structure-aware generation (an rng seeded
    by the rest) or the raw bytes as they are — so libFuzzer's own mutations still count."""
    structured = bool(data) and data[0] % 4 != 0
    return structured, random.Random(data[1:]), data[1:]


def instrument():
    """Context manager that coverage-instruments keepbook imports under atheris."""
    if atheris is not None:
        return atheris.instrument_imports(include=["keepbook"])
    import contextlib
    return contextlib.nullcontext()
