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
