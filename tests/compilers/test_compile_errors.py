"""Bad cells end with a CompileError that carries the compiler's own words at the cell's lines."""

from __future__ import annotations

import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from keepbook.kernel import compilers
from keepbook.kernel.compilers.errors import parse_diagnostics
from keepbook.kernel.compilers.run import run_tool


@pytest.mark.slow
@pytest.mark.usefixtures("warmed")
def test_c_syntax_error_names_cell_line_and_column():
    source = "#include <stdio.h>\nint main(void) {\n    int x = 1\n    return x;\n}\n"
    with pytest.raises(compilers.CompileError) as caught:
        compilers.compile_cell("c", source)
    error = caught.value
    assert error.language == "c"
    assert "cell.c:3:14: error: expected ';' at end of declaration" in error.message
    assert "keepbook-cell-" not in error.message  # no temp paths leak
    assert error.diagnostics[0] == compilers.Diagnostic("cell.c", 3, 14, "error", "expected ';' at end of declaration")
    assert error.summary == "cell.c:3:14: error: expected ';' at end of declaration"


@pytest.mark.slow
@pytest.mark.usefixtures("warmed")
def test_c_link_error_is_reported():
    with pytest.raises(compilers.CompileError) as caught:
        compilers.compile_cell("c", "int missing(void);\nint main(void) { return missing(); }\n")
    assert "missing" in caught.value.message


@pytest.mark.parametrize("language", ["c", "cpp", "zig", "rust", "wat"])
@pytest.mark.parametrize("source", ["", "   \n\t\n"])
def test_empty_cell_is_a_clear_error(language, source):
    with pytest.raises(compilers.CompileError, match=f"the %%{language} cell is empty"):
        compilers.compile_cell(language, source)


def test_unknown_language_and_opt_level():
    with pytest.raises(compilers.CompileError, match="unknown cell language 'fortran'"):
        compilers.compile_cell("fortran", "program x")
    with pytest.raises(compilers.CompileError, match="unknown optimisation level '-O9'"):
        compilers.compile_cell("c", "int main(void){return 0;}", opt="-O9")


def test_compiler_past_its_deadline_is_stopped_and_says_so():
    start = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        with pytest.raises(compilers.CompileTimeout, match=r"did not finish within 0.5 s and was stopped"):
            run_tool(
                [sys.executable, "-c", "import subprocess, sys; subprocess.run([sys.executable, '-c', 'import time; time.sleep(30)'])"],
                cwd=Path(tmp), env=None, timeout=0.5, language="c",
            )  # fmt: skip
    assert time.monotonic() - start < 5


def test_cancel_event_stops_the_compiler_promptly():
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    start = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        with pytest.raises(compilers.CompileCancelled, match="interrupted; nothing was sent"):
            run_tool(
                [sys.executable, "-c", "import time; time.sleep(30)"],
                cwd=Path(tmp), env=None, timeout=60, language="c", cancel=cancel,
            )  # fmt: skip
    assert time.monotonic() - start < 3


def test_compile_cell_timeout_is_a_compile_error():
    with pytest.raises(compilers.CompileTimeout) as caught:
        compilers.compile_cell("cpp", "#include <iostream>\nint main() { std::cout << 1; }\n", timeout=0.001)
    assert isinstance(caught.value, compilers.CompileError)


def test_missing_compiler_binary_is_toolchain_missing():
    with tempfile.TemporaryDirectory() as tmp:
        with pytest.raises(compilers.ToolchainMissing, match="not installed"):
            run_tool(["/nonexistent/zig", "cc"], cwd=Path(tmp), env=None, timeout=5, language="c")


def test_oversized_module_is_refused():
    with pytest.raises(compilers.CompileError, match="at most 64 MiB"):
        compilers.check_module("c", b"\0asm" + bytes(compilers.MAX_MODULE_BYTES))


def test_parse_diagnostics_clang_zig_and_rustc_styles():
    output = (
        "cell.c:3:5: error: use of undeclared identifier 'y'\n"
        "/usr/include/stdio.h:10:1: note: elsewhere\n"
        "cell.c:1:1: fatal error: 'nope.h' file not found\n"
        "error[E0425]: cannot find value `y` in this scope\n"
        " --> cell.rs:4:13\n"
        "warning: unused variable: `x`\n"
        "  --> cell.rs:2:9\n"
    )
    c = parse_diagnostics(output, "cell.c")
    assert [str(d) for d in c] == [
        "cell.c:3:5: error: use of undeclared identifier 'y'",
        "cell.c:1:1: error: 'nope.h' file not found",
    ]
    rust = parse_diagnostics(output, "cell.rs")
    assert [(d.line, d.column, d.severity) for d in rust] == [(4, 13, "error"), (2, 9, "warning")]
    assert rust[0].message == "cannot find value `y` in this scope"
