"""Shared set-up for compiler tests: zig's libc caches are warmed once, before any test's clock."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import wasmtime

from keepbook.kernel import compilers


@pytest.fixture(scope="session")
def warmed() -> None:
    compilers.warm()


def _run_start(module: bytes) -> tuple[int, str]:
    """Run a WASI command's `_start` locally (test-only stand-in for the Keep) → (exit code, stdout)."""
    engine = wasmtime.Engine()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "stdout"
        store = wasmtime.Store(engine)
        wasi = wasmtime.WasiConfig()
        wasi.stdout_file = str(out)
        store.set_wasi(wasi)
        linker = wasmtime.Linker(engine)
        linker.define_wasi()
        instance = linker.instantiate(store, wasmtime.Module(engine, module))
        code = 0
        try:
            instance.exports(store)["_start"](store)
        except wasmtime.ExitTrap as exit_:
            code = exit_.code
        return code, out.read_text()


def _invoke(module: bytes, name: str, *args: object) -> object:
    """Instantiate a reactor, run `_initialize` if it has one, then call export `name`."""
    engine = wasmtime.Engine()
    store = wasmtime.Store(engine)
    store.set_wasi(wasmtime.WasiConfig())
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    instance = linker.instantiate(store, wasmtime.Module(engine, module))
    exports = instance.exports(store)
    if "_initialize" in exports:
        exports["_initialize"](store)
    return exports[name](store, *args)


def _export_names(module: bytes) -> set[str]:
    return {export.name for export in wasmtime.Module(wasmtime.Engine(), module).exports}


# Helpers are handed out as fixtures: `from conftest import ...` would be ambiguous next to the other
# test folders' conftest.py files.
@pytest.fixture
def run_start():
    return _run_start


@pytest.fixture
def invoke():
    return _invoke


@pytest.fixture
def export_names():
    return _export_names
