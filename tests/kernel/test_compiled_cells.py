"""%%c, %%cpp, %%zig and %%rust through jupyter_client against the keepbook kernel: compiled
here with zig (or rustc) to wasm32-wasi, only the module runs in the Keep.  One kernel, one Keep."""

from __future__ import annotations

import pytest

from keepbook.kernel import compilers
from tests.kernel.kernel_client import Kernel, ok

pytestmark = pytest.mark.slow

HELLO_C = '%%c\n#include <stdio.h>\nint main(void) {\n    printf("hello from C %d\\n", 6 * 7);\n    return 0;\n}'
HELLO_CPP = """%%cpp
#include <iostream>
#include <vector>
int main() {
    std::vector<int> v{1, 2, 3};
    int s = 0;
    for (int x : v) s += x;
    std::cout << "hello from C++ " << s << std::endl;
}"""
HELLO_ZIG = """%%zig
const std = @import("std");

pub fn main(init: std.process.Init) !void {
    var buffer: [256]u8 = undefined;
    var stdout: std.Io.File.Writer = .init(.stdout(), init.io, &buffer);
    try stdout.interface.print("hello from Zig {d}\\n", .{6 * 7});
    try stdout.interface.flush();
}"""
ADD_C = "int add(int a, int b) {\n    return a + b;\n}"


def _rust_target() -> bool:
    try:
        compilers.rust_toolchain()
    except compilers.ToolchainMissing:
        return False
    return True


@pytest.fixture(scope="module")
def kernel():
    compilers.warm()  # zig's libc caches, before any test's clock
    k = Kernel()
    try:
        assert k.execute("%keep new --backend nil").status == "ok"
        yield k
    finally:
        k.close()




@pytest.mark.parametrize("cell, expected", [(HELLO_C, "hello from C 42\n"),
                                            (HELLO_CPP, "hello from C++ 6\n"),
                                            (HELLO_ZIG, "hello from Zig 42\n")], ids=["c", "cpp", "zig"])
def test_compiled_cell_prints_from_the_keep(kernel, cell, expected):
    assert ok(kernel.execute(cell)).stream("stdout") == expected


def test_reactor_export_with_invoke(kernel):
    res = ok(kernel.execute(f"%%c --invoke add 2 3\n{ADD_C}"))
    assert res.of_type("execute_result")[0]["data"]["text/plain"] == "5"


def test_verbose_shows_the_zig_command(kernel):
    res = ok(kernel.execute(f"%%c --verbose\n{HELLO_C[4:]}"))
    err = res.stream("stderr")
    assert "zig cc -target wasm32-wasi" in err and "-O2" in err and "cell.c" in err
    assert res.stream("stdout") == "hello from C 42\n"


def test_compile_error_has_the_line_and_nothing_is_sent(kernel):
    before = kernel.execute("%keep status").text()
    res = kernel.execute("%%c\n#include <stdio.h>\n\nint main(void) {\n    return nope;\n}")
    assert res.status == "error"
    err = res.errors()[0]
    assert err["ename"] == "CompileError"
    assert "cell.c:4:" in err["evalue"] and "nope" in err["evalue"]
    assert "nothing was sent" in err["evalue"]
    after = kernel.execute("%keep status").text()
    cells = [line for line in (before + "\n" + after).splitlines() if line.startswith("cells_run")]
    assert len(cells) == 2 and cells[0] == cells[1], cells  # the Keep ran no cell


@pytest.mark.skipif(_rust_target(), reason="a Rust toolchain with wasm32-wasip1 is installed; "
                    "test_rust_cell_runs covers it")
def test_rust_without_a_wasm_target_says_how_to_install_one(kernel):
    res = kernel.execute('%%rust\nfn main() {\n    println!("hi");\n}')
    assert res.status == "error"
    err = res.errors()[0]
    assert "wasm32-wasip1" in err["evalue"] and "rustup target add wasm32-wasip1" in err["evalue"]
    assert "nothing was sent" in err["evalue"]


@pytest.mark.skipif(not _rust_target(), reason="no Rust toolchain with a wasm32-wasip1 target here")
def test_rust_cell_runs(kernel):
    res = ok(kernel.execute('%%rust\nfn main() {\n    println!("hello from Rust {}", 6 * 7);\n}',
                            timeout=300))
    assert res.stream("stdout") == "hello from Rust 42\n"


def test_verbose_shows_the_command_once(kernel):
    res = ok(kernel.execute(f"%%c --verbose\n{HELLO_C[4:]}"))
    assert res.stream("stderr").count("-target wasm32-wasi") == 1, res.stream("stderr")


def test_wrong_export_and_wrong_arguments_are_clear(kernel):
    res = kernel.execute(f"%%c --invoke nope 1\n{ADD_C}")
    assert res.status == "error" and res.errors()[0]["ename"] == "NoSuchExport"
    assert "add" in res.errors()[0]["evalue"]  # it lists what the module does export
    res = kernel.execute(f"%%c --invoke add 1\n{ADD_C}")
    assert res.status == "error" and "takes 2 argument" in res.errors()[0]["evalue"]


def test_c_without_main_says_to_use_invoke(kernel):
    res = kernel.execute(f"%%c\n{ADD_C}")
    assert res.status == "error"
    assert "--invoke" in res.text()


ARGS_ENV_STDIN_C = r"""#include <stdio.h>
#include <stdlib.h>
int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) printf("arg %s\n", argv[i]);
    printf("MODE=%s\n", getenv("MODE") ? getenv("MODE") : "(unset)");
    char line[128];
    while (fgets(line, sizeof line, stdin)) printf("in: %s", line);
    return 0;
}"""


def test_arguments_environment_and_stdin_from_the_cell(kernel):
    cell = ("%%c --arg first --arg='two words' --arg=-v --env MODE=fast --stdin -\n"
            + ARGS_ENV_STDIN_C + "\n%%stdin\nline one\nline two\n")
    res = ok(kernel.execute(cell, timeout=300))
    assert res.stream("stdout") == ("arg first\narg two words\narg -v\nMODE=fast\n"
                                    "in: line one\nin: line two\n")


def test_stdin_from_a_file_on_this_machine(kernel, tmp_path):
    (tmp_path / "input.txt").write_text("from a file\n")
    res = ok(kernel.execute(f"%%c --stdin {tmp_path / 'input.txt'}\n" + ARGS_ENV_STDIN_C,
                            timeout=300))
    assert res.stream("stdout") == "MODE=(unset)\nin: from a file\n"
    res = kernel.execute(f"%%c --stdin {tmp_path / 'missing.txt'}\n" + ARGS_ENV_STDIN_C)
    assert res.status == "error" and "cannot read it here" in res.text()


def test_wat_cell_takes_the_same_options(kernel):
    wat = ('%%wat --stdin -\n(module\n'
           '  (import "wasi_snapshot_preview1" "fd_read" (func $r (param i32 i32 i32 i32) (result i32)))\n'
           '  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))\n'
           '  (memory (export "memory") 1)\n'
           '  (func (export "_start")\n'
           '    (i32.store (i32.const 0) (i32.const 64)) (i32.store (i32.const 4) (i32.const 32))\n'
           '    (drop (call $r (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))\n'
           '    (i32.store (i32.const 4) (i32.load (i32.const 8)))\n'
           '    (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))\n'
           '%%stdin\necho me')
    assert ok(kernel.execute(wat)).stream("stdout") == "echo me\n"
