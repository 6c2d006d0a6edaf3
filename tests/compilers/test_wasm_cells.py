"""%%wat text and %%wasm modules (base64 body or --file): checked before anything is sent."""

from __future__ import annotations

import base64

import pytest

from keepbook.kernel import compilers

HELLO_WAT = """\
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "hello from WAT\\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 15))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
"""


def test_wat_assembles_and_runs(run_start):
    result = compilers.compile_cell("wat", HELLO_WAT)
    assert result.language == "wat" and result.command == []
    assert run_start(result.module) == (0, "hello from WAT\n")


def test_wat_syntax_error_points_at_cell_line():
    with pytest.raises(compilers.CompileError) as caught:
        compilers.compile_cell("wat", "(module\n  (func (result i32)\n    i32.const 1)\n")
    error = caught.value
    assert "cell.wat:" in error.message and "<anon>" not in error.message
    assert error.diagnostics and error.diagnostics[0].file == "cell.wat"


def test_wat_type_error_is_a_validation_error():
    with pytest.raises(compilers.CompileError, match="invalid WebAssembly module: type mismatch"):
        compilers.compile_cell("wat", "(module (func (result i32) f32.const 1))")


@pytest.fixture(scope="module")
def hello_module() -> bytes:
    return compilers.compile_cell("wat", HELLO_WAT).module


def test_wasm_base64_body_with_line_breaks(hello_module):
    encoded = base64.b64encode(hello_module).decode()
    body = "\n".join(encoded[i : i + 40] for i in range(0, len(encoded), 40)) + "\n"
    assert compilers.decode_wasm_cell(body, None) == hello_module


def test_wasm_file(tmp_path, hello_module):
    path = tmp_path / "hello.wasm"
    path.write_bytes(hello_module)
    assert compilers.decode_wasm_cell("", str(path)) == hello_module
    assert compilers.decode_wasm_cell("  \n", str(path)) == hello_module


@pytest.mark.parametrize(
    ("body", "file", "expected"),
    [
        ("", None, "the %%wasm cell is empty"),
        ("AGFzbQEAAAA=!!", None, "not valid base64 \\(first unexpected character '!'"),
        ("AGFzbQEAAAA", None, "not valid base64"),
        (base64.b64encode(b"hello world").decode(), None, "does not start with the \\\\0asm magic"),
        (base64.b64encode(b"(module)").decode(), None, "looks like WAT text: use %%wat"),
        (base64.b64encode(b"\0asm\x01\0\0\0\x01\xff").decode(), None, "invalid WebAssembly module"),
        ("AGFzbQEAAAA=", "x.wasm", "either with --file or as base64"),
    ],
)
def test_wasm_bad_input(body, file, expected):
    with pytest.raises(compilers.CompileError, match=expected):
        compilers.decode_wasm_cell(body, file)


def test_wasm_missing_file_and_directory(tmp_path):
    with pytest.raises(compilers.CompileError, match="--file nope.wasm: no such file"):
        compilers.decode_wasm_cell("", "nope.wasm")
    with pytest.raises(compilers.CompileError, match="is a directory"):
        compilers.decode_wasm_cell("", str(tmp_path))


def test_wasm_empty_module_is_valid():
    assert compilers.decode_wasm_cell("AGFzbQEAAAA=", None) == b"\0asm\x01\0\0\0"
