"""%%zig cells: zig build-exe to wasm32-wasi (command) or -fno-entry -rdynamic (reactor)."""

from __future__ import annotations

import pytest

from keepbook.kernel import compilers

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("warmed")]

HELLO_ZIG = """\
const std = @import("std");

pub fn main(init: std.process.Init) !void {
    var buffer: [256]u8 = undefined;
    var stdout: std.Io.File.Writer = .init(.stdout(), init.io, &buffer);
    try stdout.interface.print("hello from Zig {d}\\n", .{6 * 7});
    try stdout.interface.flush();
}
"""


def test_zig_hello(run_start):
    result = compilers.compile_cell("zig", HELLO_ZIG)
    assert result.command[1:8] == ["build-exe", "-target", "wasm32-wasi", "-mcpu", "generic+simd128", "-O", "ReleaseFast"]
    assert run_start(result.module) == (0, "hello from Zig 42\n")


def test_zig_reactor_exports_export_fns(invoke, export_names):
    source = "export fn add(a: i32, b: i32) i32 {\n    return a + b;\n}\nfn helper() void {}\n"
    result = compilers.compile_cell("zig", source, reactor=True)
    assert "add" in export_names(result.module)
    assert invoke(result.module, "add", 2, 3) == 5


def test_zig_compile_error_points_at_the_cell():
    source = 'const std = @import("std");\npub fn main() void {\n    const x: i32 = "text";\n    _ = x;\n}\n'
    with pytest.raises(compilers.CompileError) as caught:
        compilers.compile_cell("zig", source)
    assert "cell.zig:3:" in caught.value.message
    assert caught.value.diagnostics[0].file == "cell.zig"
    assert caught.value.diagnostics[0].line == 3


def test_zig_cell_without_main_says_to_use_invoke():
    with pytest.raises(compilers.CompileError, match="--invoke NAME"):
        compilers.compile_cell("zig", "export fn add(a: i32, b: i32) i32 {\n    return a + b;\n}\n")
