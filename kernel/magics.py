"""Parsing of keepbook's magics.  Pure: text in, a typed command out, or a clear error.

Cell layout: leading ``%line`` magics run in order; a cell whose first line is ``%%name`` is a
cell magic; anything else is Python that runs inside the Keep.
"""

from __future__ import annotations

import argparse
import re
import shlex
from dataclasses import dataclass, field
from typing import Any, Mapping

from keepbook.keep.shared import facts, sizes
from keepbook.keep.shared.evidence.certs import format_fingerprint, parse_fingerprint

LINE_MAGICS = ("keep", "attest", "upload", "audit", "review")
CELL_MAGICS = ("wat", "wasm", "c", "cpp", "zig", "rust", "python")
KEEP_SUBCOMMANDS = ("new", "status", "list", "close")
REVIEW_SUBCOMMANDS = ("list", "show", "approve", "reject")


class MagicError(ValueError):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # never sys.exit inside a kernel
        raise MagicError(f"{self.prog}: {message}\nusage: {self.format_usage().strip()[7:]}")

    def exit(self, status: int = 0, message: str | None = None) -> None:
        raise MagicError(message or self.format_help())


def parse_size(text: str) -> int:
    """'512MiB', '1G', '2048' → bytes (the shared parser, as an option type)."""
    try:
        return sizes.parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return v


def _number(text: str) -> int | float:
    try:
        return int(text, 0)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"--invoke arguments must be numbers, got {text!r}") from None


def _fingerprint(text: str) -> str:
    try:
        return format_fingerprint(parse_fingerprint(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _keep_new_parser() -> _Parser:
    p = _Parser(prog="%keep new", add_help=False)
    p.add_argument("--backend", default=facts.DEFAULT_BACKEND)
    p.add_argument("--profile", default=facts.DEFAULT_PROFILE, choices=facts.PROFILES)
    p.add_argument("--manager", help="keep manager URL (default: an embedded one on loopback)")
    p.add_argument("--token-file", help="bearer token file for --manager (or $KEEPBOOK_MANAGER_TOKEN)")
    p.add_argument("--manager-ca", help="CA certificate (PEM) to trust for an https:// --manager "
                   "(default: the system's trust store)")
    p.add_argument("--memory", type=parse_size, default=facts.DEFAULT_MEMORY_BYTES,
                   help="per-cell memory limit")
    p.add_argument("--timeout", type=_positive_float, default=float(facts.DEFAULT_TIMEOUT_S),
                   help="per-cell deadline, seconds")
    p.add_argument("--output-cap", type=parse_size, default=facts.DEFAULT_OUTPUT_BYTES,
                   help="output bytes per cell")
    p.add_argument("--policy", help="output policy file (TOML) from the data owner")
    p.add_argument("--trust-policy", help="your trust policy file (TOML)")
    p.add_argument("--trust-sim-root", action="append", default=[], type=_fingerprint,
                   metavar="sha256:…", dest="trust_sim_roots",
                   help="accept this keep manager's SIMULATED root, on purpose (the fingerprint "
                        "its operator announced; remembered for this manager once a Keep attests)")
    return p


def _attest_parser() -> _Parser:
    p = _Parser(prog="%attest", add_help=False)
    p.add_argument("--explain", action="store_true", help="show each evidence field explained")
    p.add_argument("--json", action="store_true", help="the trust vector as JSON")
    p.add_argument("--save", metavar="FILE",
                   help="also write the Keep's attestation to FILE (for `keepbook seal --keep-evidence`)")
    return p


def _review_parser() -> _Parser:
    """``%review``: the data owner's review from a notebook, with the owner's own expectations
    (the options of `keepbook seal` and `keepbook review`)."""
    p = _Parser(prog="%review", add_help=False)
    p.add_argument("command", nargs="?", choices=REVIEW_SUBCOMMANDS,
                   help="without one: the review widget")
    p.add_argument("id", nargs="?", type=int)
    p.add_argument("reason", nargs="*", help="reject: why (the analyst sees it)")
    p.add_argument("--keep", dest="keep_id", help="the Keep to review (default: this notebook's)")
    p.add_argument("--owner-key", help="your owner key (default: $KEEPBOOK_OWNER_KEY or "
                   "~/.config/keepbook/owner-key.pem)")
    p.add_argument("--profile", default="production", choices=facts.PROFILES)
    p.add_argument("--keep-fingerprint", metavar="FP")
    p.add_argument("--allow-simulated", action="store_true")
    p.add_argument("--trust-policy")
    return p


#: in a Wasm or compiled cell, the lines after this one are the program's standard input
STDIN_SEPARATOR = "%%stdin"


def _env_pair(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name or "\0" in text:
        raise argparse.ArgumentTypeError(f"--env takes NAME=VALUE, got {text!r}")
    return name, value


def _split_stdin(name: str, args: argparse.Namespace, body: str) -> tuple[str, str | None]:
    """The cell's program text and, after a ``%%stdin`` line, its standard input text (ending
    with a newline, as a text file does: notebooks drop a cell's last newline)."""
    lines = body.split("\n")
    cut = next((i for i, ln in enumerate(lines) if ln.strip() == STDIN_SEPARATOR), None)
    if cut is None:
        if args.stdin == "-":
            raise MagicError(f"%%{name} --stdin -: the program's input is the cell text after a "
                             f"line {STDIN_SEPARATOR}, and this cell has no such line")
        return body, None
    if args.stdin not in (None, "-"):
        raise MagicError(f"%%{name}: --stdin {args.stdin} and a {STDIN_SEPARATOR} line both give "
                         f"the program's input; keep one")
    text = "\n".join(lines[cut + 1:])
    return "\n".join(lines[:cut]), text if not text or text.endswith("\n") else text + "\n"


def _run_parser(name: str) -> _Parser:
    p = _Parser(prog=f"%%{name}", add_help=False)
    p.add_argument("--invoke", nargs="+", metavar=("NAME", "ARG"),
                   help="call this export with numeric arguments instead of _start")
    p.add_argument("--timeout", type=_positive_float)
    p.add_argument("--fuel", type=int, help="instruction budget (Wasm fuel)")
    p.add_argument("--arg", action="append", default=[], dest="argv", metavar="A",
                   help="a command-line argument for the program (repeatable; --arg=-v for one "
                        "that starts with '-')")
    p.add_argument("--env", action="append", default=[], type=_env_pair, metavar="K=V",
                   help="an environment variable for the program (repeatable)")
    p.add_argument("--stdin", metavar="FILE|-",
                   help="standard input: a file on this machine, or - for the cell text after "
                        f"a line {STDIN_SEPARATOR}")
    if name == "wasm":
        p.add_argument("--file", help="path to a .wasm file (else base64 in the cell body)")
    if name in ("c", "cpp", "zig", "rust"):
        p.add_argument("--verbose", action="store_true", help="show the compiler command")
        p.add_argument("-O", dest="opt", default="2", help="optimisation level (default 2)")
        p.add_argument("--flag", action="append", default=[], dest="flags",
                       help="extra compiler flag (repeatable)")
    return p


def parse_keep_cell(line: str) -> argparse.Namespace:
    """Options of ``%%keep`` (the IPython extension's cell magic: Python in the Keep)."""
    try:
        words = shlex.split(line)
    except ValueError as exc:
        raise MagicError(f"%%keep {line.strip()}: {exc}") from None
    p = _Parser(prog="%%keep", add_help=False)
    p.add_argument("--timeout", type=_positive_float, help="deadline for this cell, seconds")
    return p.parse_args(words)


@dataclass
class LineMagic:
    name: str
    args: argparse.Namespace
    sub: str | None = None


@dataclass
class CellMagic:
    name: str
    args: argparse.Namespace
    body: str
    invoke: str | None = None
    invoke_args: list = field(default_factory=list)
    stdin_text: str | None = None  # the cell text after a %%stdin line


@dataclass
class Cell:
    magics: list[LineMagic]
    cell_magic: CellMagic | None
    python: str  # what is left: Python for the Keep (may be empty)


def parse_line_magic(line: str) -> LineMagic:
    try:
        words = shlex.split(line.strip()[1:])
    except ValueError as exc:
        raise MagicError(f"{line.strip()}: {exc}") from None
    if not words:
        raise MagicError("empty magic: write %keep, %attest, %upload or %audit")
    name, rest = words[0], words[1:]
    if name == "keep":
        if not rest or rest[0] not in KEEP_SUBCOMMANDS:
            raise MagicError(f"%keep needs one of: {', '.join(KEEP_SUBCOMMANDS)}")
        sub, rest = rest[0], rest[1:]
        if sub == "new":
            return LineMagic("keep", _keep_new_parser().parse_args(rest), sub)
        if sub == "close":
            p = _Parser(prog="%keep close", add_help=False)
            p.add_argument("id", nargs="?")
            return LineMagic("keep", p.parse_args(rest), sub)
        if rest:
            raise MagicError(f"%keep {sub} takes no arguments")
        return LineMagic("keep", argparse.Namespace(), sub)
    if name == "attest":
        return LineMagic("attest", _attest_parser().parse_args(rest))
    if name == "upload":
        p = _Parser(prog="%upload", add_help=False)
        p.add_argument("path")
        p.add_argument("--as", dest="name")
        return LineMagic("upload", p.parse_args(rest))
    if name == "review":
        args = _review_parser().parse_args(rest)
        if args.command in ("show", "approve", "reject") and args.id is None:
            raise MagicError(f"%review {args.command} needs the request number: %review "
                             f"{args.command} N")
        if args.command == "reject" and not " ".join(args.reason).strip():
            raise MagicError("%review reject N REASON: the analyst sees your reason; give one")
        if args.command != "reject" and args.reason:
            raise MagicError(f"%review {args.command or ''}: unexpected {' '.join(args.reason)!r}")
        return LineMagic("review", args, args.command)
    if name == "audit":
        p = _Parser(prog="%audit", add_help=False)
        p.add_argument("--save", metavar="FILE", help="where to save the verified log "
                       "(default: $KEEPBOOK_AUDIT_DIR or ~/.local/share/keepbook/audit/)")
        return LineMagic("audit", p.parse_args(rest))
    raise MagicError(f"unknown magic %{name}; keepbook knows %{', %'.join(LINE_MAGICS)} and "
                     f"cell magics %%{', %%'.join(CELL_MAGICS)}")


PARAMETERS_HEADER = "# parameters"


def parse_parameters(code: str) -> dict[str, Any] | None:
    """The notebook's parameters, if this is a parameters cell: its first line is
    ``# Parameters`` (what papermill writes in the cell it injects) and every statement is
    ``name = literal``.  Parsed with ``ast.literal_eval`` only — nothing runs on the host.
    The kernel keeps them to fill ``{name}`` in magic lines (``%keep new --backend {backend}``)."""
    import ast

    lines = [ln for ln in code.splitlines() if ln.strip()]
    if not lines or not lines[0].strip().lower().startswith(PARAMETERS_HEADER):
        return None
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return None
    values: dict[str, Any] = {}
    for node in tree.body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name)):
            return None
        try:
            values[node.targets[0].id] = ast.literal_eval(node.value)
        except ValueError:
            return None
    return values


_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def substitute(line: str, params: Mapping[str, Any]) -> str:
    """Fill ``{name}`` in a magic line from the notebook's parameters (shell-quoted); a
    ``{name}`` that is not a parameter is left as written."""
    return _PLACEHOLDER.sub(lambda m: shlex.quote(str(params[m.group(1)])) if m.group(1) in params
                            else m.group(0), line)


def _line_magic_name(line: str) -> str:
    word = line.strip()[1:].split(None, 1)
    return word[0] if word else ""


def parse_cell(code: str, params: Mapping[str, Any] | None = None) -> Cell:
    """Split a cell: leading keepbook line magics (run by the kernel), a keepbook cell magic,
    or the rest — Python for the Keep's IPython shell, which also runs IPython's own magics
    (``%time``, ``%matplotlib inline``, ``%%timeit``...) and says so for those it does not know."""
    if params:
        lines = [substitute(ln, params) if ln.lstrip().startswith("%") else ln
                 for ln in code.splitlines()]
        code = "\n".join(lines)
    lines = code.splitlines()
    i = 0
    while i < len(lines) and not lines[i].strip():
        i += 1
    if i < len(lines) and lines[i].lstrip().startswith("%%"):
        head = lines[i].strip()[2:]
        try:
            words = shlex.split(head)
        except ValueError as exc:
            raise MagicError(f"%%{head}: {exc}") from None
        if not words:
            raise MagicError("empty cell magic: write %%NAME on the first line")
        if words[0] not in CELL_MAGICS:  # IPython's (%%time, %%capture, ...): the Keep runs it
            return Cell([], None, "\n".join(lines[i:]))
        name = words[0]
        body = "\n".join(lines[i + 1:])
        if name == "python":
            return Cell([], None, body)
        args = _run_parser(name).parse_args(words[1:])
        invoke, invoke_args = None, []
        if args.invoke:
            invoke = args.invoke[0]
            try:
                invoke_args = [_number(a) for a in args.invoke[1:]]
            except argparse.ArgumentTypeError as exc:
                raise MagicError(f"%%{name}: {exc}") from None
        body, stdin_text = _split_stdin(name, args, body)
        return Cell([], CellMagic(name, args, body, invoke, invoke_args, stdin_text), "")
    magics: list[LineMagic] = []
    while i < len(lines):
        s = lines[i].strip()
        if s.startswith("%") and not s.startswith("%%") and _line_magic_name(s) in LINE_MAGICS:
            magics.append(parse_line_magic(s))
            i += 1
        elif not s or s.startswith("#"):
            i += 1
        else:
            break
    return Cell(magics, None, "\n".join(lines[i:]).strip("\n"))


def complete_magic(code: str, cursor_pos: int) -> tuple[list[str], int, int] | None:
    """Completion for magic names, %keep and %review subcommands and options; None when not in
    a magic."""
    line_start = code.rfind("\n", 0, cursor_pos) + 1
    prefix = code[line_start:cursor_pos]
    from keepbook.kernel.completion import magic_names

    if prefix.startswith("%%"):
        word = prefix[2:]
        if " " in word:
            return None
        return ([f"%%{m}" for m in magic_names("cell") if m.startswith(word)], line_start,
                cursor_pos)
    if prefix.startswith("%"):
        parts = prefix[1:].split(" ")
        if len(parts) == 1:
            return ([f"%{m}" for m in magic_names("line") if m.startswith(parts[0])], line_start,
                    cursor_pos)
        if parts[0] not in LINE_MAGICS:
            return None  # an IPython magic's arguments: the Keep's shell completes them
        subcommands = {"keep": KEEP_SUBCOMMANDS, "review": REVIEW_SUBCOMMANDS}.get(parts[0])
        if subcommands and len(parts) == 2 and not parts[1].startswith("-"):
            start = cursor_pos - len(parts[1])
            return ([s for s in subcommands if s.startswith(parts[1])], start, cursor_pos)
        word, before = parts[-1], parts[-2]
        start = cursor_pos - len(word)
        if parts[:2] == ["keep", "new"]:
            if before in VALUE_CHOICES:
                return ([v for v in VALUE_CHOICES[before] if v.startswith(word)], start, cursor_pos)
            if word.startswith("-"):
                options = [o for a in _keep_new_parser()._actions for o in a.option_strings]
                return (sorted(o for o in options if o.startswith(word)), start, cursor_pos)
        parser = {"attest": _attest_parser, "review": _review_parser}.get(parts[0])
        if parser and word.startswith("-"):
            options = [o for a in parser()._actions for o in a.option_strings]
            return (sorted(o for o in options if o.startswith(word)), start, cursor_pos)
        if parts[0] == "review" and before == "--profile":
            return ([p for p in facts.PROFILES if p.startswith(word)], start, cursor_pos)
        return ([], cursor_pos, cursor_pos)
    return None


#: values offered by Tab after these %keep new options
def _value_choices() -> dict[str, tuple[str, ...]]:
    return {"--backend": tuple(facts.DEFAULT_BACKENDS), "--profile": facts.PROFILES,
            "--trust-sim-root": ("sha256:",)}


VALUE_CHOICES = _value_choices()
