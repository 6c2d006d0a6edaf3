"""Time to the first result: `%keep new` + attest (fresh nonce, verified) + provision + a
trivial cell — cold (a new keepldr+wasmldr) and from the keep manager's warm pool.  Baseline:
starting a local ipykernel through jupyter_client and getting the result of the same trivial
cell."""

from __future__ import annotations

import subprocess
import time

from .core import Row, Sample, goal
from .lab import Lab, Manager


def ipykernel_first_result() -> float:
    from jupyter_client.manager import start_new_kernel

    t = time.perf_counter()
    km, kc = start_new_kernel(kernel_name="python3", stderr=subprocess.DEVNULL)
    try:
        execute(kc, "6 * 7")
        return time.perf_counter() - t
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def execute(kc, code: str, timeout: float = 120) -> dict:
    """Send one cell; return the shell reply once the kernel is idle again."""
    msg_id = kc.execute(code)
    while True:
        msg = kc.get_iopub_msg(timeout=timeout)
        if (msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "status"
                and msg["content"]["execution_state"] == "idle"):
            break
    while True:
        reply = kc.get_shell_msg(timeout=timeout)
        if reply["parent_header"].get("msg_id") == msg_id:
            if reply["content"]["status"] != "ok":
                raise RuntimeError(f"cell failed: {code[:60]!r}: {reply['content']}")
            return reply


def rows(reps: int, backend: str = "sim-snp") -> list[Row]:
    base = Sample()
    for _ in range(reps):
        base.add(ipykernel_first_result())

    cold_wat, cold_py = Sample(), Sample()
    mgr = Manager(backends=backend)
    lab = Lab(mgr, backend)
    try:
        lab.first_result("wasm")  # warm-up: the client's imports and simulated roots, page cache
        for _ in range(reps):
            cold_wat.add(lab.first_result("wasm"))
        for _ in range(reps):
            cold_py.add(lab.first_result("python"))
    finally:
        lab.stop()
        mgr.stop()

    warm_wat, warm_py = Sample(), Sample()
    warm_error = None
    try:
        mgr = Manager(backends=backend, pool=1)
    except RuntimeError as exc:
        warm_error = f"keepmgr --pool did not start: {exc}"
    if warm_error is None:
        lab = Lab(mgr, backend)
        try:
            mgr.wait_pool(backend, 1)
            lab.first_result("wasm")
            for kind, sample in (("wasm", warm_wat), ("python", warm_py)):
                for _ in range(reps):
                    mgr.wait_pool(backend, 1)  # the pool refills in the background; untimed
                    time.sleep(0.2)             # let the refill's boot settle (2 cores)
                    sample.add(lab.first_result(kind))
        except Exception as exc:
            warm_error = f"warm pool: {type(exc).__name__}: {exc}"
        finally:
            lab.stop()
            mgr.stop()

    label = "local ipykernel: start_new_kernel + `6 * 7`"
    how = f"embedded-style keepmgr on loopback, backend {backend}, trivial WAT cell (--invoke answer)"
    rows = [
        Row("first_result_cold_s", "s", cold_wat, base, goal("first_result_cold_s"),
            note=how + "; manager already running", baseline_label=label),
        Row("first_result_warm_s", "s", warm_wat, base, goal("first_result_warm_s"),
            note=how + "; keepmgr --pool 1", baseline_label=label),
        Row("first_result_cold_python_s", "s", cold_py, base, goal("first_result_cold_python_s"),
            note="as first_result_cold_s with `6 * 7` as a Python cell (boots the interpreter)",
            baseline_label=label),
        Row("first_result_warm_python_s", "s", warm_py, base, goal("first_result_warm_python_s"),
            note="as first_result_warm_s with `6 * 7` as a Python cell", baseline_label=label),
    ]
    if warm_error:
        for r in rows:
            if "warm" in r.name:
                r.value, r.note = None, f"not measured: {warm_error}"
    return rows
