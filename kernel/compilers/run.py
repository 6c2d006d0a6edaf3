"""Run one compiler process with a deadline, so a stuck compiler never hangs the kernel."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import CompileCancelled, CompileTimeout, ToolchainMissing

DEFAULT_TIMEOUT = 120.0


@dataclass(frozen=True)
class ToolRun:
    returncode: int
    output: str  # stdout and stderr interleaved, as the user would see them in a terminal


def run_tool(
    argv: list[str],
    *,
    cwd: Path,
    env: dict[str, str] | None,
    timeout: float,
    language: str,
    cancel: threading.Event | None = None,
) -> ToolRun:
    """Run `argv` in its own process group; on timeout or `cancel` kill the whole group (zig forks workers).

    `cancel` lets a kernel that compiles off its event loop stop the compiler on a Jupyter interrupt.
    """
    try:
        process = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    except FileNotFoundError as exc:
        raise ToolchainMissing(language, f"the {language} compiler {argv[0]!r} is not installed: {exc}") from None
    except PermissionError as exc:
        raise ToolchainMissing(language, f"the {language} compiler {argv[0]!r} cannot be run: {exc}") from None
    deadline = time.monotonic() + timeout
    try:
        while True:
            remaining = deadline - time.monotonic()
            try:
                out, _ = process.communicate(timeout=max(0.0, min(remaining, 0.1 if cancel else remaining)))
                break
            except subprocess.TimeoutExpired:
                if cancel is not None and cancel.is_set():
                    _kill_group(process)
                    raise CompileCancelled(language, "compilation interrupted; nothing was sent to the Keep") from None
                if time.monotonic() >= deadline:
                    raise
    except subprocess.TimeoutExpired:
        _kill_group(process)
        raise CompileTimeout(
            language,
            f"the {language} compiler did not finish within {timeout:g} s and was stopped; nothing was sent "
            "to the Keep. If this was the first compile with these flags, zig may have been building its "
            "libc: run `keepbook warm` once, or try again.",
        ) from None
    except BaseException:  # KeyboardInterrupt / kernel interrupt: never leave a compiler behind
        _kill_group(process)
        raise
    return ToolRun(process.returncode, out.decode("utf-8", errors="replace"))


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        process.kill()
    process.communicate()
