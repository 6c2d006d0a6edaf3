"""Small Wasm cells the tests share."""

from __future__ import annotations

LOOP_WAT = '(module (func (export "_start") (loop $l (br $l))))'


def print_wat(text: str, fd: int = 1) -> str:
    """A WAT module whose _start writes ``text`` (ASCII) to ``fd`` with WASI fd_write."""
    data = text.encode()
    escaped = "".join(chr(b) if 32 <= b < 127 and chr(b) not in '"\\' else f"\\{b:02x}" for b in data)
    return f'''(module
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "{escaped}")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16)) (i32.store (i32.const 4) (i32.const {len(data)}))
    (drop (call $w (i32.const {fd}) (i32.const 0) (i32.const 1) (i32.const 8)))))'''
