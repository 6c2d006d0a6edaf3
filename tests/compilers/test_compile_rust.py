"""%%rust: compiled when rustc has a wasm32-wasi(p1) target, otherwise a message saying how to get one."""

from __future__ import annotations

import pytest

from keepbook.kernel import compilers
from keepbook.kernel.compilers import toolchains


def _rust_available() -> bool:
    try:
        compilers.rust_toolchain()
    except compilers.ToolchainMissing:
        return False
    return True


RUST_PRESENT = _rust_available()


@pytest.mark.skipif(RUST_PRESENT, reason="a Rust toolchain with a wasm32-wasi target is installed; the compile test covers it")
def test_rust_without_wasm_target_says_so_and_how_to_install():
    with pytest.raises(compilers.ToolchainMissing) as caught:
        compilers.compile_cell("rust", 'fn main() { println!("hi"); }\n')
    message = caught.value.message
    assert caught.value.language == "rust"
    assert "wasm32-wasip1" in message
    assert "rustup target add wasm32-wasip1" in message


def test_no_rustc_at_all_says_so(monkeypatch):
    monkeypatch.setattr(toolchains, "_find_rustc", lambda: None)
    toolchains.forget_rust_probe()
    try:
        with pytest.raises(compilers.ToolchainMissing, match=r"no `rustc` was found.*rustup target add wasm32-wasip1"):
            compilers.compile_cell("rust", "fn main() {}\n")
    finally:
        toolchains.forget_rust_probe()


def test_rust_probe_is_cached(monkeypatch):
    toolchains.forget_rust_probe()
    try:
        toolchains.rust_toolchain()
    except compilers.ToolchainMissing:
        pass
    monkeypatch.setattr(toolchains, "_probe_rust", lambda: pytest.fail("probed twice"))
    try:
        toolchains.rust_toolchain()
    except compilers.ToolchainMissing:
        pass
    toolchains.forget_rust_probe()


@pytest.mark.slow
@pytest.mark.skipif(not RUST_PRESENT, reason="no Rust toolchain with a wasm32-wasip1 target on this machine")
def test_rust_hello_and_reactor(run_start, invoke):
    result = compilers.compile_cell("rust", 'fn main() {\n    println!("hello from Rust");\n}\n')
    assert run_start(result.module) == (0, "hello from Rust\n")
    reactor = compilers.compile_cell("rust", '#[no_mangle]\npub extern "C" fn add(a: i32, b: i32) -> i32 { a + b }\n', reactor=True)
    assert invoke(reactor.module, "add", 2, 3) == 5
    with pytest.raises(compilers.CompileError) as caught:
        compilers.compile_cell("rust", "fn main() {\n    let x: i32 = \"no\";\n}\n")
    assert any(d.file == "cell.rs" and d.line == 2 for d in caught.value.diagnostics)


FAKE_RUSTC = """\
#!{python}
# Stands in for rustc: records its argv, fails like rustc on a cell containing BAD, else writes a module.
import json, pathlib, sys
args = sys.argv[1:]
pathlib.Path({record!r}).write_text(json.dumps(args))
source = pathlib.Path("cell.rs").read_text()
if "BAD" in source:
    sys.stderr.write("error[E0425]: cannot find value `BAD` in this scope\\n --> cell.rs:2:5\\n  |\\n2 |     BAD\\n")
    sys.exit(1)
pathlib.Path(args[args.index("-o") + 1]).write_bytes(b"\\0asm\\x01\\0\\0\\0")
"""


@pytest.fixture
def fake_rustc(tmp_path, monkeypatch):
    """A stand-in rustc, so the command line and error mapping are tested without a wasm target."""
    import sys

    record = tmp_path / "argv.json"
    script = tmp_path / "rustc"
    script.write_text(FAKE_RUSTC.format(python=sys.executable, record=str(record)))
    script.chmod(0o755)
    monkeypatch.setattr(toolchains, "_probe_rust", lambda: toolchains.RustToolchain(script, "wasm32-wasip1"))
    toolchains.forget_rust_probe()
    compilers.clear_cache()
    yield record
    toolchains.forget_rust_probe()


def test_rust_command_line_and_reactor_flags(fake_rustc):
    import json

    result = compilers.compile_cell("rust", "fn main() {}\n", opt="-O3", verbose=True)
    argv = json.loads(fake_rustc.read_text())
    assert argv[:4] == ["--target", "wasm32-wasip1", "--edition", "2021"]
    assert "opt-level=3" in argv and "--crate-type" not in argv
    assert argv[-3:] == ["cell.rs", "-o", "cell.wasm"]
    assert result.module == b"\0asm\x01\0\0\0"
    assert result.log.startswith("$ rustc --target wasm32-wasip1")
    compilers.compile_cell("rust", "#[no_mangle]\npub extern \"C\" fn f() {}\n", reactor=True, flags=["-C", "lto"])
    argv = json.loads(fake_rustc.read_text())
    assert argv[argv.index("--crate-type") + 1] == "cdylib"
    assert argv[-5:-3] == ["-C", "lto"]


def test_rust_error_maps_to_the_cell_line(fake_rustc):
    with pytest.raises(compilers.CompileError) as caught:
        compilers.compile_cell("rust", "fn main() {\n    BAD\n}\n")
    error = caught.value
    assert " --> cell.rs:2:5" in error.message
    assert error.diagnostics == (
        compilers.Diagnostic("cell.rs", 2, 5, "error", "cannot find value `BAD` in this scope"),
    )
    assert error.summary == "cell.rs:2:5: error: cannot find value `BAD` in this scope"
