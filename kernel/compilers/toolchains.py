"""Where the compilers are and which command line each language gets.

Flags chosen (see docs in __init__):
  C / C++  zig cc|c++ -target wasm32-wasi -msimd128 <opt> -s [-fno-exceptions for C++] [reactor flags] <user flags>
           cell.c -o cell.wasm
           reactor: -mexec-model=reactor -fvisibility=default -rdynamic
           (clang hides symbols by default on wasm, so -rdynamic alone exports nothing; with default
           visibility every non-static function of the cell becomes an export, static ones do not)
  Zig      zig build-exe -target wasm32-wasi -mcpu generic+simd128 -O <mode> -fstrip [-fno-entry -rdynamic] <user flags>
           cell.zig -femit-bin=cell.wasm   (reactor exports the cell's `export fn`s)
  Rust     rustc --target wasm32-wasip1 --edition 2021 -C target-feature=+simd128 -C opt-level=<n> -C strip=debuginfo
           [--crate-type cdylib] <user flags> cell.rs -o cell.wasm  (reactor exports #[no_mangle] pub extern "C" fns)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from .errors import CompileError, ToolchainMissing

WASI_TARGET = "wasm32-wasi"
RUST_TARGETS = ("wasm32-wasip1", "wasm32-wasi")  # wasip1 is the current name; wasi the pre-1.78 one
OPT_LEVELS = ("-O0", "-O1", "-O2", "-O3", "-Os", "-Oz")
ZIG_MODES = {"-O0": "Debug", "-O1": "ReleaseSafe", "-O2": "ReleaseFast", "-O3": "ReleaseFast", "-Os": "ReleaseSmall", "-Oz": "ReleaseSmall"}
RUST_OPT = {"-O0": "0", "-O1": "1", "-O2": "2", "-O3": "3", "-Os": "s", "-Oz": "z"}
# SIMD: the Keep runs wasmtime 49, which enables Wasm SIMD by default; letting clang/LLVM vectorise
# loops made the matrix-multiply benchmark 1.4x faster (0.24 s -> 0.17 s vs 0.095 s native gcc -O2).
C_CPU_FLAGS = ("-msimd128",)
ZIG_CPU = "generic+simd128"
RUST_CPU_FLAGS = ("-C", "target-feature=+simd128")
C_REACTOR_FLAGS = ("-mexec-model=reactor", "-fvisibility=default", "-rdynamic")
# zig's libc++ for wasm32-wasi has no exception runtime: without this, any std::vector links
# against missing __cxa_throw; with it, `throw`/`try` in the cell get a clear compile error.
CPP_FLAGS = ("-fno-exceptions",)
ZIG_REACTOR_FLAGS = ("-fno-entry", "-rdynamic")

CELL_FILES = {"c": "cell.c", "cpp": "cell.cpp", "zig": "cell.zig", "rust": "cell.rs", "wat": "cell.wat"}
OUTPUT_FILE = "cell.wasm"


def check_opt(language: str, opt: str) -> str:
    if opt not in OPT_LEVELS:
        raise CompileError(language, f"unknown optimisation level {opt!r}; use one of {', '.join(OPT_LEVELS)}")
    return opt


# ---------------------------------------------------------------------------------------- zig


def zig_executable() -> Path:
    """The zig binary shipped inside the `ziglang` wheel (no PATH lookup: that wheel is a dependency)."""
    try:
        import ziglang
    except ImportError:
        raise ToolchainMissing("c", "the `ziglang` package is not installed; run `pip install ziglang`") from None
    exe = Path(ziglang.__file__).parent / ("zig.exe" if sys.platform == "win32" else "zig")
    if not exe.is_file():
        raise ToolchainMissing("c", f"the `ziglang` package has no zig binary at {exe}; reinstall it")
    return exe


def zig_cache_dir() -> Path:
    """One per-user zig cache, so the libc built by warm() is reused by every later compile."""
    override = os.environ.get("KEEPBOOK_ZIG_CACHE")
    return Path(override) if override else Path(platformdirs.user_cache_dir("keepbook")) / "zig"


def zig_env(workdir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["ZIG_GLOBAL_CACHE_DIR"] = str(zig_cache_dir())
    env["ZIG_LOCAL_CACHE_DIR"] = str(workdir / ".zig-cache")  # per-cell objects die with the temp dir
    return env


def c_command(language: str, opt: str, reactor: bool, flags: list[str]) -> list[str]:
    driver = "cc" if language == "c" else "c++"
    return [
        str(zig_executable()), driver, "-target", WASI_TARGET, *C_CPU_FLAGS, opt, "-s",
        *(CPP_FLAGS if language == "cpp" else ()), *(C_REACTOR_FLAGS if reactor else ()), *flags,
        CELL_FILES[language], "-o", OUTPUT_FILE,
    ]  # fmt: skip


def zig_command(opt: str, reactor: bool, flags: list[str]) -> list[str]:
    return [
        str(zig_executable()), "build-exe", "-target", WASI_TARGET, "-mcpu", ZIG_CPU,
        "-O", ZIG_MODES[opt], "-fstrip",
        *(ZIG_REACTOR_FLAGS if reactor else ()), *flags,
        CELL_FILES["zig"], f"-femit-bin={OUTPUT_FILE}",
    ]  # fmt: skip


# --------------------------------------------------------------------------------------- rust


@dataclass(frozen=True)
class RustToolchain:
    rustc: Path
    target: str


_RUST_INSTALL = (
    "Install one with rustup (https://rustup.rs), then add the target: `rustup target add wasm32-wasip1`, "
    "and run the cell again."
)
_rust_lock = threading.Lock()
_rust_cached: tuple[float, RustToolchain | str] | None = None
RUST_PROBE_TTL = 30.0  # re-probe after this many seconds, so installing the target mid-session works


def _find_rustc() -> Path | None:
    found = shutil.which("rustc")
    if found:
        return Path(found)
    cargo_home = Path(os.environ.get("CARGO_HOME", Path.home() / ".cargo"))
    candidate = cargo_home / "bin" / "rustc"  # kernels started from a desktop often lack ~/.cargo/bin in PATH
    return candidate if candidate.is_file() else None


def _probe_rust() -> RustToolchain | str:
    rustc = _find_rustc()
    if rustc is None:
        return f"%%rust needs a Rust compiler with the wasm32-wasip1 target, and no `rustc` was found on this machine. {_RUST_INSTALL}"
    try:
        sysroot = subprocess.run(
            [str(rustc), "--print", "sysroot"], capture_output=True, text=True, timeout=15, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        return f"%%rust found {rustc} but could not run it ({exc}). {_RUST_INSTALL}"
    for target in RUST_TARGETS:
        if (Path(sysroot) / "lib" / "rustlib" / target / "lib").is_dir():
            return RustToolchain(rustc, target)
    return (
        f"%%rust found a Rust compiler ({rustc}) but no wasm32-wasip1 (or wasm32-wasi) target is installed "
        f"in it. Add the target with `rustup target add wasm32-wasip1`, then run the cell again."
    )


def rust_toolchain() -> RustToolchain:
    """The Rust compiler and its wasm target, or ToolchainMissing saying how to install one (cached)."""
    global _rust_cached
    with _rust_lock:
        now = time.monotonic()
        if _rust_cached is None or now - _rust_cached[0] > RUST_PROBE_TTL:
            _rust_cached = (now, _probe_rust())
        found = _rust_cached[1]
    if isinstance(found, str):
        raise ToolchainMissing("rust", found)
    return found


def forget_rust_probe() -> None:
    global _rust_cached
    with _rust_lock:
        _rust_cached = None


def rust_command(opt: str, reactor: bool, flags: list[str]) -> list[str]:
    toolchain = rust_toolchain()
    return [
        str(toolchain.rustc), "--target", toolchain.target, "--edition", "2021",
        *RUST_CPU_FLAGS, "-C", f"opt-level={RUST_OPT[opt]}", "-C", "strip=debuginfo", "--color", "never",
        *(("--crate-type", "cdylib") if reactor else ()), *flags,
        CELL_FILES["rust"], "-o", OUTPUT_FILE,
    ]  # fmt: skip
