"""Measure the WASI preview-1 test suite (WebAssembly/wasi-testsuite, its prebuilt
``wasm32-wasip1`` tests) in a keepbook cell and in plain wasmtime-py with the same engine.

A one-off measurement, not a test: the suite is not part of keepbook.  Check out its
``prod/testsuite-base`` branch somewhere and run::

    python tools/wasi_testsuite.py /path/to/wasi-testsuite [--runtime-file OLD_runtime.py]

"keepbook cell" runs each test as a ``%%wasm`` cell would (``WasmRuntime.run`` with the test's
``--arg``s, ``--env``s; the scratch folder a cell gets is empty: a test's ``root`` folder cannot
be put at ``/`` by a cell).  "wasmtime-py" runs it the way the suite's own wasmtime adapter does:
argv, environment, a copy of the test's ``root`` preopened at ``/``, stdout/stderr to files.
A test passes when its exit code and any expected stdout/stderr match its JSON spec.
``--runtime-file`` measures an older keep/inside/runtime.py (whose run() may take fewer options).
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import shutil
import sys
import tempfile
from pathlib import Path

import wasmtime as wt

SUITES = ("tests/assemblyscript/testsuite/wasm32-wasip1", "tests/c/testsuite/wasm32-wasip1",
          "tests/rust/testsuite/wasm32-wasip1")


def load_tests(root: Path) -> list[tuple[Path, dict]]:
    tests = []
    for suite in SUITES:
        for wasm in sorted((root / suite).glob("*.wasm")):
            spec_file = wasm.with_suffix(".json")
            spec = json.loads(spec_file.read_text()) if spec_file.exists() else {}
            tests.append((wasm, spec))
    return tests


def _passed(spec: dict, code: int | None, out: str, err: str) -> bool:
    if code != spec.get("exit_code", 0):
        return False
    if spec.get("stdout") is not None and out != spec["stdout"]:
        return False
    return spec.get("stderr") is None or err == spec["stderr"]


def run_plain(wasm: Path, spec: dict) -> bool:
    engine = wt.Engine()
    with tempfile.TemporaryDirectory() as tmp:
        wasi = wt.WasiConfig()
        wasi.argv = [wasm.name, *spec.get("args", [])]
        wasi.env = [[k, v] for k, v in spec.get("env", {}).items()]
        if spec.get("root"):
            dest = Path(tmp) / "root"
            shutil.copytree(wasm.parent / spec["root"], dest)
            wasi.preopen_dir(str(dest), "/")
        wasi.stdout_file = str(Path(tmp) / "out")
        wasi.stderr_file = str(Path(tmp) / "err")
        store = wt.Store(engine)
        store.set_wasi(wasi)
        linker = wt.Linker(engine)
        linker.define_wasi()
        code: int | None = 0
        try:
            linker.instantiate(store, wt.Module(engine, wasm.read_bytes())).exports(store)["_start"](store)
        except wt.ExitTrap as e:
            code = e.code
        except Exception:
            code = None
        return _passed(spec, code, (Path(tmp) / "out").read_text(errors="replace"),
                       (Path(tmp) / "err").read_text(errors="replace"))


def run_cell(runtime_cls, wasm: Path, spec: dict) -> bool:
    events: list[tuple[str, dict]] = []
    with tempfile.TemporaryDirectory() as tmp:
        rt = runtime_cls(fast_tier=False, **({"scratch_root": tmp} if "scratch_root" in
                                             inspect.signature(runtime_cls).parameters else {}))
        kwargs = {}
        if "wasi" in inspect.signature(rt.run).parameters:
            from keepbook.keep.inside.runtime import WasiInput

            kwargs["wasi"] = WasiInput.of(spec.get("args", []), spec.get("env", {}).items())
        status = rt.run(wasm.read_bytes(), emit=lambda k, c: events.append((k, c)),
                        timeout_s=30, **kwargs)
        rt.close()
    code = 0 if status.get("ok") else status.get("exit_code")
    out = "".join(c["text"] for k, c in events if k == "stream" and c["name"] == "stdout")
    err = "".join(c["text"] for k, c in events if k == "stream" and c["name"] == "stderr")
    return _passed(spec, code, out, err)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("suite", type=Path, help="a checkout of wasi-testsuite (prod/testsuite-base)")
    ap.add_argument("--runtime-file", type=Path, help="measure this runtime.py instead")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args(argv)
    if args.runtime_file:
        spec = importlib.util.spec_from_file_location("measured_runtime", args.runtime_file)
        module = importlib.util.module_from_spec(spec)
        sys.modules["measured_runtime"] = module
        spec.loader.exec_module(module)
        runtime_cls = module.WasmRuntime
    else:
        from keepbook.keep.inside.runtime import WasmRuntime as runtime_cls
    tests = load_tests(args.suite)
    plain = cell = 0
    for wasm, spec in tests:
        p, c = run_plain(wasm, spec), run_cell(runtime_cls, wasm, spec)
        plain += p
        cell += c
        if args.verbose or p != c:
            print(f"{'pass' if p else 'FAIL'} {'pass' if c else 'FAIL'}  {wasm.parent.parent.parent.name}/{wasm.stem}")
    print(f"{len(tests)} tests: wasmtime-py {plain} pass, keepbook cell {cell} pass")
    return 0


if __name__ == "__main__":
    sys.exit(main())
