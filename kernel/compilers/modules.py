"""Checking Wasm bytes before they travel: %%wasm cell bodies, %%wat text, compiler output."""

from __future__ import annotations

import base64
import binascii
import re
import threading
from pathlib import Path

import wasmtime

from .errors import CompileError, Diagnostic

MAX_MODULE_BYTES = 64 * 1024 * 1024
WASM_MAGIC = b"\0asm"

_engine: wasmtime.Engine | None = None
_engine_lock = threading.Lock()


def _validation_engine() -> wasmtime.Engine:
    global _engine
    with _engine_lock:
        if _engine is None:
            _engine = wasmtime.Engine()
        return _engine


def too_big_message(size: int) -> str:
    return f"the module is {size / 2**20:.1f} MiB; a cell module may be at most {MAX_MODULE_BYTES // 2**20} MiB"


def check_module(language: str, module: bytes) -> bytes:
    """Size limit, magic number and wasmtime validation; a clear CompileError for each."""
    if len(module) > MAX_MODULE_BYTES:
        raise CompileError(language, too_big_message(len(module)))
    if not module.startswith(WASM_MAGIC):
        hint = " (it looks like WAT text: use %%wat)" if module.lstrip().startswith(b"(") else ""
        raise CompileError(language, f"not a WebAssembly module: it does not start with the \\0asm magic{hint}")
    try:
        wasmtime.Module.validate(_validation_engine(), module)
    except wasmtime.WasmtimeError as exc:
        raise CompileError(language, f"invalid WebAssembly module: {exc}") from None
    return module


def decode_wasm_cell(body: str, file: str | None) -> bytes:
    """The module of a %%wasm cell: `--file path.wasm`, or base64 in the body (line breaks allowed)."""
    text = "".join(body.split())
    if file is not None:
        if text:
            raise CompileError("wasm", "give the module either with --file or as base64 in the cell body, not both")
        return check_module("wasm", _read_module_file(file))
    if not text:
        raise CompileError("wasm", "the %%wasm cell is empty: put the module in it as base64, or use --file path.wasm")
    if len(text) > (MAX_MODULE_BYTES * 4) // 3 + 4:
        raise CompileError("wasm", f"the base64 module is larger than the {MAX_MODULE_BYTES // 2**20} MiB limit")
    try:
        module = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        bad = re.search(r"[^A-Za-z0-9+/=]", text)
        where = f" (first unexpected character {bad.group()!r} at position {bad.start()})" if bad else ""
        raise CompileError("wasm", f"the cell body is not valid base64{where}: {exc}") from None
    return check_module("wasm", module)


def _read_module_file(file: str) -> bytes:
    path = Path(file).expanduser()
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise CompileError("wasm", f"--file {file}: no such file (looked in {path.absolute().parent})") from None
    except OSError as exc:
        raise CompileError("wasm", f"--file {file}: cannot read it: {exc.strerror or exc}") from None
    if path.is_dir():
        raise CompileError("wasm", f"--file {file}: is a directory, not a .wasm file")
    if size > MAX_MODULE_BYTES:
        raise CompileError(
            "wasm", f"--file {file}: {size / 2**20:.1f} MiB, more than the {MAX_MODULE_BYTES // 2**20} MiB limit"
        )
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CompileError("wasm", f"--file {file}: cannot read it: {exc.strerror or exc}") from None


_WAT_LOCATION = re.compile(r"-->\s*<anon>:(\d+):(\d+)")


def wat_to_module(source: str) -> bytes:
    """Assemble WAT text with wasmtime; parse errors point at `cell.wat:LINE:COL`."""
    try:
        module = wasmtime.wat2wasm(source)
    except wasmtime.WasmtimeError as exc:
        message = str(exc).replace("<anon>", "cell.wat")
        diagnostics = ()
        location = _WAT_LOCATION.search(str(exc))
        if location:
            first = message.splitlines()[0]
            diagnostics = (Diagnostic("cell.wat", int(location[1]), int(location[2]), "error", first),)
        raise CompileError("wat", message, diagnostics) from None
    return check_module("wat", bytes(module))
