"""%%c and %%cpp cells: zig cc / zig c++ to wasm32-wasi, run here with wasmtime + WASI."""

from __future__ import annotations

import pytest

from keepbook.kernel import compilers

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("warmed")]

HELLO_C = """\
#include <stdio.h>

int main(void) {
    printf("hello from C\\n");
    return 0;
}
"""

REACTOR_C = """\
int add(int a, int b) { return a + b; }
static int twice(int x) { return 2 * x; }
double scaled(double x) { return twice(1) * x; }
"""


def test_c_hello_world_runs_start(run_start, export_names):
    result = compilers.compile_cell("c", HELLO_C)
    assert result.language == "c"
    assert result.module.startswith(b"\0asm")
    assert "_start" in export_names(result.module)
    assert run_start(result.module) == (0, "hello from C\n")


def test_c_command_uses_wasm32_wasi_and_O2_by_default():
    result = compilers.compile_cell("c", HELLO_C)
    assert result.command[1:7] == ["cc", "-target", "wasm32-wasi", "-msimd128", "-O2", "-s"]
    assert result.command[-3:] == ["cell.c", "-o", "cell.wasm"]
    assert result.command_line.startswith("zig cc -target wasm32-wasi -msimd128 -O2 -s")


def test_verbose_log_starts_with_the_command_and_user_flags_are_passed():
    result = compilers.compile_cell("c", HELLO_C, flags=["-DGREETING=1", "-Wall"], opt="-O3", verbose=True)
    assert result.log.startswith("$ zig cc -target wasm32-wasi -msimd128 -O3 -s -DGREETING=1 -Wall cell.c")
    assert "-DGREETING=1" in result.command


def test_warnings_are_in_the_log_and_name_the_cell_line():
    source = "int main(void) {\n    int unused;\n    return 0;\n}\n"
    result = compilers.compile_cell("c", source, flags=["-Wall"])
    assert "cell.c:2:9: warning: unused variable 'unused'" in result.log


def test_c_reactor_exports_non_static_functions_for_invoke(invoke, export_names):
    result = compilers.compile_cell("c", REACTOR_C, reactor=True)
    names = export_names(result.module)
    assert {"add", "scaled", "_initialize"} <= names
    assert "twice" not in names and "_start" not in names
    assert invoke(result.module, "add", 2, 3) == 5
    assert invoke(result.module, "scaled", 1.5) == 3.0


def test_c_reactor_with_libc_and_main_still_exports_functions(invoke):
    source = '#include <stdio.h>\nint add(int a, int b) { printf("adding\\n"); return a + b; }\nint main(void) { return add(1, 2); }\n'
    result = compilers.compile_cell("c", source, reactor=True)
    assert invoke(result.module, "add", 40, 2) == 42


def test_cpp_iostream_hello(run_start):
    source = """\
#include <iostream>
#include <string>
#include <vector>

int main() {
    std::vector<std::string> words{"hello", "from", "C++"};
    for (const auto &w : words) std::cout << w << (&w == &words.back() ? "\\n" : " ");
    return 0;
}
"""
    result = compilers.compile_cell("cpp", source)
    assert result.command[1] == "c++" and "-fno-exceptions" in result.command
    assert run_start(result.module) == (0, "hello from C++\n")


def test_cpp_throw_is_a_clear_compile_error():
    source = '#include <stdexcept>\nint main() {\n    throw std::runtime_error("no");\n}\n'
    with pytest.raises(compilers.CompileError) as caught:
        compilers.compile_cell("cpp", source)
    assert "cell.cpp:3:5: error: cannot use 'throw' with exceptions disabled" in caught.value.message


def test_cpp_reactor_extern_c_export(invoke):
    source = '#include <numeric>\n#include <vector>\nextern "C" int sum_to(int n) { std::vector<int> v(n); std::iota(v.begin(), v.end(), 1); return std::accumulate(v.begin(), v.end(), 0); }\n'
    result = compilers.compile_cell("c++", source, reactor=True)
    assert invoke(result.module, "sum_to", 10) == 55


def test_nonzero_exit_code_is_kept(run_start):
    result = compilers.compile_cell("c", "int main(void) { return 3; }\n")
    assert run_start(result.module)[0] == 3


def test_same_cell_is_served_from_the_in_process_cache():
    source = HELLO_C.replace("hello from C", "cached hello")
    first = compilers.compile_cell("c", source)
    second = compilers.compile_cell("c", source)
    assert not first.cached and second.cached
    assert second.module == first.module
    assert not compilers.compile_cell("c", source, opt="-O1").cached  # flags are part of the key


def test_bench_program_compiles_and_prints_checksum(run_start):
    result = compilers.compile_cell("c", compilers.bench_c_source(n=16, repeats=2))
    code, out = run_start(result.module)
    assert code == 0 and out.startswith("checksum ")


def test_c_cell_without_main_is_refused_pointing_to_invoke():
    with pytest.raises(compilers.CompileError) as exc:
        compilers.compile_cell("c", "int add(int a, int b) { return a + b; }\n")
    assert "cell.c: error: the cell has no main()" in str(exc.value) and "--invoke NAME" in str(exc.value)
    # the same source as a reactor is fine
    assert compilers.compile_cell("c", "int add(int a, int b) { return a + b; }\n", reactor=True).module
