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
    try:  # every way out other than a finished compiler kills the whole process group
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise CompileTimeout(
                    language,
                    f"the {language} compiler did not finish within {timeout:g} s and was stopped; nothing was "
                    "sent to the Keep. If this was the first compile with these flags, zig may have been "
                    "building its libc: run `keepbook warm` once, or try again.",
                )
            if cancel is not None and cancel.is_set():
                raise CompileCancelled(language, "compilation interrupted; nothing was sent to the Keep")
            try:
                out, _ = process.communicate(timeout=min(remaining, _POLL) if cancel else remaining)
            except subprocess.TimeoutExpired:
                continue
            return ToolRun(process.returncode, out.decode("utf-8", errors="replace"))
    except BaseException:  # timeout, cancel, KeyboardInterrupt: never leave a compiler behind
        _kill_group(process)
        raise


_POLL = 0.1  # how often a `cancel` event is checked


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        process.kill()
    try:
        process.communicate(timeout=5)
    except subprocess.TimeoutExpired:  # a grandchild left the group and holds the pipe: stop waiting
        if process.stdout is not None:
            process.stdout.close()
        process.wait()
