"""Errors a compiled cell can end with, and the compiler diagnostics they carry.

Every failure is a `CompileError` so the kernel needs one `except` to turn it into a Jupyter
error and send nothing to the Keep; the subclasses only exist so callers and tests can tell
"your code is wrong" from "this machine lacks a toolchain" or "the compiler took too long".
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Diagnostic:
    """One compiler message located in the cell (file is the cell's temp name, e.g. cell.c)."""

    file: str
    line: int
    column: int
    severity: str  # "error", "warning", "note"
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.severity}: {self.message}"


class CompileError(Exception):
    """A cell could not be turned into a Wasm module; `message` is the compiler's own text."""

    def __init__(self, language: str, message: str, diagnostics: tuple[Diagnostic, ...] | list[Diagnostic] = ()):
        super().__init__(message)
        self.language = language
        self.message = message
        self.diagnostics = tuple(diagnostics)

    @property
    def summary(self) -> str:
        """One line for Jupyter's `evalue`: the first error diagnostic, else the first line."""
        for diagnostic in self.diagnostics:
            if diagnostic.severity == "error":
                return str(diagnostic)
        lines = [line for line in self.message.splitlines() if line.strip()]
        return lines[0] if lines else f"{self.language} compilation failed"


class ToolchainMissing(CompileError):
    """The compiler for this language is not installed here; the message says how to get it."""


class CompileTimeout(CompileError):
    """The compiler ran past its deadline and was stopped."""


class CompileCancelled(CompileError):
    """The caller (a Jupyter interrupt) asked to stop; the compiler was killed."""


# clang and zig: "cell.c:3:5: error: expected ';'" (zig omits nothing, clang may say "fatal error").
_GNU_STYLE = re.compile(
    r"^(?P<file>[^\s:][^:\n]*):(?P<line>\d+):(?P<column>\d+): "
    r"(?P<severity>fatal error|error|warning|note)(?:\[[^\]]*\])?: (?P<message>.*)$"
)
# rustc and wat2wasm: "error[E0425]: cannot find value `y`" then "  --> cell.rs:3:5".
_HEADER = re.compile(r"^(?P<severity>error|warning|note)(?:\[[^\]]*\])?: (?P<message>.*)$")
_ARROW = re.compile(r"^\s*--> (?P<file>[^:\n]+):(?P<line>\d+):(?P<column>\d+)\s*$")


def parse_diagnostics(output: str, cell_file: str) -> tuple[Diagnostic, ...]:
    """Pick out the messages that point into the cell; others (library headers, std) are skipped."""
    found: list[Diagnostic] = []
    header: tuple[str, str] | None = None
    for line in output.splitlines():
        match = _GNU_STYLE.match(line)
        if match:
            if match["file"] == cell_file:
                severity = "error" if match["severity"] == "fatal error" else match["severity"]
                found.append(Diagnostic(cell_file, int(match["line"]), int(match["column"]), severity, match["message"]))
            header = None
            continue
        match = _HEADER.match(line)
        if match:
            header = (match["severity"], match["message"])
            continue
        match = _ARROW.match(line)
        if match and header is not None:
            if match["file"] == cell_file:
                found.append(Diagnostic(cell_file, int(match["line"]), int(match["column"]), *header))
            header = None
    return tuple(found)
