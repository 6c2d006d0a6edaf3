"""Client-side compilation of %%c, %%cpp, %%zig, %%rust and %%wat cells, and %%wasm decoding.

This runs on the user's (trusted) machine; only the resulting Wasm module travels to the Keep.

    compile_cell(language, source, *, flags=None, opt="-O2", verbose=False, reactor=False,
                 timeout=120.0, cancel=None) -> CompileResult(language, module, command, log, cached)
    decode_wasm_cell(body, file) -> bytes
    warm() -> None                      # build zig's libc caches once, in set-up
    bench_c_source(n, repeats) -> str   # C matrix-multiply program for the benchmark

Every failure is a CompileError (subclasses ToolchainMissing, CompileTimeout, CompileCancelled) whose `message`
is the compiler's text with `cell.<ext>:LINE:COL` locations and whose `diagnostics` are parsed.
"""

from .bench import bench_c_source
from .compile import LANGUAGES, CompileResult, clear_cache, compile_cell, warm
from .errors import CompileCancelled, CompileError, CompileTimeout, Diagnostic, ToolchainMissing
from .modules import MAX_MODULE_BYTES, check_module, decode_wasm_cell
from .run import DEFAULT_TIMEOUT
from .toolchains import rust_toolchain, zig_cache_dir

__all__ = [
    "DEFAULT_TIMEOUT",
    "LANGUAGES",
    "MAX_MODULE_BYTES",
    "CompileCancelled",
    "CompileError",
    "CompileResult",
    "CompileTimeout",
    "Diagnostic",
    "ToolchainMissing",
    "bench_c_source",
    "check_module",
    "clear_cache",
    "compile_cell",
    "decode_wasm_cell",
    "rust_toolchain",
    "warm",
    "zig_cache_dir",
]
