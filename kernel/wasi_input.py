"""What a Wasm or compiled cell's program gets besides its module — ``--arg``, ``--env``,
``--stdin FILE|-`` — as the RunRequest fields that carry it over the attested channel.  A
``--stdin FILE`` is read here, on the user's machine; it travels sealed like the module."""

from __future__ import annotations

import os

from keepbook.keep.shared import protocol
from keepbook.kernel.magics import CellMagic, MagicError


def read_stdin_file(name: str, path: str) -> bytes:
    """The bytes of a ``--stdin FILE``; a clear error when it cannot be read or is too big."""
    full = os.path.expanduser(path)
    try:
        size = os.path.getsize(full)
        if size > protocol.MAX_STDIN_BYTES:
            raise MagicError(f"%%{name} --stdin {path}: {size:,} bytes, over the limit of "
                             f"{protocol.MAX_STDIN_BYTES:,} for a program's standard input "
                             f"(upload big inputs with %upload and read them from /data)")
        with open(full, "rb") as fh:
            return fh.read(protocol.MAX_STDIN_BYTES + 1)
    except OSError as exc:
        raise MagicError(f"%%{name} --stdin {path}: cannot read it here: "
                         f"{exc.strerror or exc}") from None


def wasi_input(m: CellMagic) -> dict:
    """``argv``, ``env`` and ``stdin`` keyword arguments for the agent's ``run``."""
    a = m.args
    stdin: bytes | None = None
    if m.stdin_text is not None:
        stdin = m.stdin_text.encode("utf-8")
    elif getattr(a, "stdin", None) not in (None, "-"):
        stdin = read_stdin_file(m.name, a.stdin)
    return {"argv": list(getattr(a, "argv", []) or []),
            "env": [[k, v] for k, v in getattr(a, "env", []) or []],
            "stdin": stdin}
