"""Trivial cell round trip through jupyter_client: the keepbook kernel (a WAT cell, a Python
cell, both executed in an attested sim-snp Keep) against a local ipykernel evaluating the same
trivial expression.  Round trip = execute_request sent → kernel idle and execute_reply received."""

from __future__ import annotations

import subprocess
import time

from .core import Row, Sample, goal
from .startup import execute

WAT_CELL = '%%wat --invoke answer\n(module (func (export "answer") (result i32) i32.const 42))'
PY_CELL = "6 * 7"


def _rtts(kc, code: str, reps: int) -> Sample:
    s = Sample()
    for _ in range(3):
        execute(kc, code)  # warm-up
    for _ in range(reps):
        t = time.perf_counter()
        execute(kc, code)
        s.add((time.perf_counter() - t) * 1000)
    return s


def rows(reps: int) -> list[Row]:
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name="python3", stderr=subprocess.DEVNULL)
    try:
        base = _rtts(kc, PY_CELL, reps)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)

    km, kc = start_new_kernel(kernel_name="keepbook")
    try:
        execute(kc, "%keep new")
        execute(kc, "%attest")
        wat = _rtts(kc, WAT_CELL, reps)
        py = _rtts(kc, PY_CELL, reps)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=False)

    label = "local ipykernel (python3 kernelspec) evaluating `6 * 7`"
    return [
        Row("rtt_wat_ratio", "ms", wat, base, goal("rtt_wat_ratio"), baseline_label=label,
            note="keepbook kernel, %%wat --invoke answer in an attested sim-snp Keep"),
        Row("rtt_python_ratio", "ms", py, base, goal("rtt_python_ratio"), baseline_label=label,
            note="keepbook kernel, `6 * 7` in the Keep's Python session"),
    ]
