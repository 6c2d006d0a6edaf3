"""compile_cell: one call from a %%c/%%cpp/%%zig/%%rust/%%wat cell body to checked Wasm bytes."""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from . import toolchains
from .errors import CompileError, parse_diagnostics
from .modules import MAX_MODULE_BYTES, check_module, too_big_message as _too_big, wat_to_module
from .run import DEFAULT_TIMEOUT, run_tool

LANGUAGES = ("wat", "c", "cpp", "zig", "rust")
ALIASES = {"c++": "cpp", "rs": "rust"}


@dataclass(frozen=True)
class CompileResult:
    language: str
    module: bytes
    command: list[str]  # exact argv run (empty for wat, which is assembled in-process)
    log: str  # compiler warnings (and, with verbose=True, the command line first)
    cached: bool = False

    @property
    def command_line(self) -> str:
        """The command for display: the zig/rustc binary by its short name, the rest verbatim."""
        if not self.command:
            return "wasmtime.wat2wasm(cell.wat)"
        return shlex.join([Path(self.command[0]).name, *self.command[1:]])

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.module).hexdigest()


_CACHE_SIZE = 64  # entries, and at most _CACHE_BYTES of modules: a few big cells must not hog memory
_CACHE_BYTES = 256 * 1024 * 1024
_cache: OrderedDict[str, CompileResult] = OrderedDict()
_cache_lock = threading.Lock()


def clear_cache() -> None:
    with _cache_lock:
        _cache.clear()


def compile_cell(
    language: str,
    source: str,
    *,
    flags: list[str] | None = None,
    opt: str = "-O2",
    verbose: bool = False,
    reactor: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
    cancel: threading.Event | None = None,
) -> CompileResult:
    """Compile a cell to a validated wasm32-wasi module on this (the user's) machine.

    reactor=True builds a module whose functions can be called by name (`--invoke NAME`):
    C/C++ export every non-static function (use `extern "C"` in C++ for unmangled names) and the
    module exports `_initialize`, which the runtime calls before the first invoke; Zig exports its
    `export fn`s, Rust its `#[no_mangle] pub extern "C" fn`s. Otherwise the module is a command
    whose `_start` runs `main`.  Raises CompileError (with diagnostics at `cell.<ext>:LINE:COL`),
    ToolchainMissing, CompileTimeout or CompileCancelled (`cancel` set, e.g. by a Jupyter
    interrupt; checked every 0.1 s); on any of them nothing should be sent to the Keep.
    """
    language = ALIASES.get(language.lower(), language.lower())
    if language not in LANGUAGES:
        raise CompileError(language, f"unknown cell language {language!r}; supported: {', '.join(LANGUAGES)}")
    if not source.strip():
        raise CompileError(language, f"the %%{language} cell is empty: write a program in it")
    flags = list(flags or [])
    toolchains.check_opt(language, opt)

    key = _cache_key(language, source, flags, opt, reactor)
    with _cache_lock:
        hit = _cache.get(key)
        if hit is not None:
            _cache.move_to_end(key)
    if hit is not None:
        return replace(hit, cached=True, log=_with_command(hit, verbose))

    if language == "wat":
        result = CompileResult("wat", wat_to_module(source), [], "")
    else:
        result = _compile_native(language, source, flags, opt, reactor, timeout, cancel)

    with _cache_lock:
        _cache[key] = result
        while len(_cache) > 1 and (
            len(_cache) > _CACHE_SIZE or sum(len(r.module) for r in _cache.values()) > _CACHE_BYTES
        ):
            _cache.popitem(last=False)
    return replace(result, log=_with_command(result, verbose))


def _with_command(result: CompileResult, verbose: bool) -> str:
    if not verbose:
        return result.log
    return f"$ {result.command_line}\n{result.log}"


def _cache_key(language: str, source: str, flags: list[str], opt: str, reactor: bool) -> str:
    identity = json.dumps([language, opt, reactor, flags, source], ensure_ascii=False)
    return hashlib.sha256(identity.encode()).hexdigest()


def _command(language: str, opt: str, reactor: bool, flags: list[str]) -> list[str]:
    if language in ("c", "cpp"):
        return toolchains.c_command(language, opt, reactor, flags)
    if language == "zig":
        return toolchains.zig_command(opt, reactor, flags)
    return toolchains.rust_command(opt, reactor, flags)


def _compile_native(
    language: str,
    source: str,
    flags: list[str],
    opt: str,
    reactor: bool,
    timeout: float,
    cancel: threading.Event | None = None,
) -> CompileResult:
    command = _command(language, opt, reactor, flags)  # raises ToolchainMissing before any temp dir
    cell_file = toolchains.CELL_FILES[language]
    with tempfile.TemporaryDirectory(prefix="keepbook-cell-") as tmp:
        workdir = Path(tmp)
        (workdir / cell_file).write_text(source, encoding="utf-8")
        env = toolchains.zig_env(workdir) if language != "rust" else None
        run = run_tool(command, cwd=workdir, env=env, timeout=timeout, language=language, cancel=cancel)
        # The cell file is passed by relative name, but be sure no temp path leaks into messages.
        output = run.output.replace(str(workdir) + "/", "").replace(str(workdir.resolve()) + "/", "")
        if run.returncode != 0:
            message = output.strip() or f"the {language} compiler failed with exit status {run.returncode}"
            if not reactor and "entry symbol not defined" in output:
                message += f"\n{_NO_MAIN_HINT}"
            raise CompileError(language, message, parse_diagnostics(output, cell_file))
        out_path = workdir / toolchains.OUTPUT_FILE
        if not out_path.is_file():
            raise CompileError(language, f"the {language} compiler reported success but wrote no module\n{output}")
        size = out_path.stat().st_size
        if size > MAX_MODULE_BYTES:  # refuse before reading a huge file into memory
            raise CompileError(language, _too_big(size))
        module = out_path.read_bytes()
    log = _clean_log(output)
    if language in ("c", "cpp") and not reactor and not _MAIN.search(source):
        # wasi-libc links a main-less command whose _start just traps: refuse now, before
        # anything is sent, rather than fail in the Keep with "unreachable".
        raise CompileError(language, f"{cell_file}: error: {_NO_MAIN_HINT}")
    return CompileResult(language, check_module(language, module), command, log)


_MAIN = re.compile(r"\bmain\b")
_NO_MAIN_HINT = (
    "the cell has no main(), so there is nothing to run; "
    "to call one of its functions use --invoke NAME ARGS (a reactor build)"
)


def _clean_log(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    return "\n".join(lines) + ("\n" if lines else "")


# ---------------------------------------------------------------------------------------- warm

_WARM_PROGRAMS: tuple[tuple[str, str, bool], ...] = (
    ("c", '#include <stdio.h>\nint main(void) { puts("warm"); return 0; }\n', False),
    ("c", '#include <stdio.h>\n#include <stdlib.h>\nint warm(int n) { char *p = malloc(n); printf("%p", p); free(p); return n; }\n', True),
    ("cpp", '#include <iostream>\nint main() { std::cout << "warm" << std::endl; return 0; }\n', False),
    ("cpp", '#include <string>\nextern "C" int warm(int n) { return (int)std::to_string(n).size(); }\n', True),
    ("zig", 'const std = @import("std");\npub fn main() void { std.debug.print("warm\\n", .{}); }\n', False),
)
WARM_TIMEOUT = 1800.0  # building libc/libc++ on a slow 2-core machine can take minutes


def warm(*, progress: Callable[[str], None] | None = None, timeout: float = WARM_TIMEOUT) -> None:
    """Build zig's wasm32-wasi libc, libc++ and compiler_rt caches for the default flag sets.

    zig builds libc the first time each flag set is used (about 30 s each here); doing it in
    set-up keeps that out of the first cell and out of test timeouts. Safe to call repeatedly:
    once the cache is warm each step takes well under a second (Zig: a few seconds).
    """
    for language, source, reactor in _WARM_PROGRAMS:
        if progress is not None:
            progress(f"warming {language}{' reactor' if reactor else ''} (wasm32-wasi, -O2)")
        _compile_native(language, source, [], "-O2", reactor, timeout)
