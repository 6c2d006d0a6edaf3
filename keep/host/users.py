"""Who may use a keep manager: bearer tokens, and the users file of a class or a team.

Runs on the untrusted host.  A token opens the manager's API, never a Keep: a Keep belongs to
the token that created it, and the manager keeps only each token's SHA-256.

``keepbook keepmgr --users FILE`` reads a TOML file::

    max_keeps_total = 12        # Keeps in all, every user together (optional)

    [defaults]                  # quotas of every user who names none (optional)
    max_keeps = 2               # Keeps one user may run at once
    max_memory = "2GiB"         # memory (the Keeps' memory limits added up) one user may hold

    [[user]]
    name = "alice"
    token_file = "tokens/alice" # relative to FILE; made (one line, mode 0600) if missing
    max_keeps = 1

    [[user]]
    name = "bob"
    token_sha256 = "9f86d0…"    # or the SHA-256 (hex) of the token, when its file lives elsewhere

Each ``--token-file`` beside it is one more principal, without quotas.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from keepbook.keep.host.quotas import Quota
from keepbook.keep.shared.sizes import format_size, parse_size

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
USER_KEYS = {"name", "token_file", "token_sha256", "max_keeps", "max_memory"}
QUOTA_KEYS = {"max_keeps", "max_memory"}
TOP_KEYS = {"max_keeps_total", "defaults", "user"}
MAX_USERS = 10_000


class UsersFileError(ValueError):
    """The users file cannot be used; the message names the file, the entry and the key."""


@dataclass(frozen=True)
class Principal:
    """One holder of a token: a named user of the users file, or an unnamed ``--token-file``."""

    name: str
    digest: str                      # SHA-256 (hex) of the bearer token
    quota: Quota = Quota()
    token_file: Path | None = None


@dataclass(frozen=True)
class Roster:
    """Everyone who may use this manager, and the limit on Keeps in all."""

    principals: tuple[Principal, ...]
    max_keeps_total: int | None = None
    source: str = "the command line"

    def by_digest(self, digest: str) -> Principal | None:
        # compare with every digest (no early exit on the first match)
        hits = [p for p in self.principals if hmac.compare_digest(p.digest, digest)]
        return hits[0] if hits else None


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def load_or_make_token(token_file: Path | None, state_dir: Path) -> tuple[str, Path]:
    """The token is one line of text in a file only its user can read (made if missing)."""
    if token_file is not None and token_file.exists():
        token = token_file.read_text().strip()
        if not token:
            raise SystemExit(f"keepmgr: token file {token_file} is empty")
        return token, token_file
    path = token_file or state_dir / "token"
    token = secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    return token, path


def _count(where: str, key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 1_000_000:
        raise UsersFileError(f"{where}: {key} must be a whole number from 0 to 1000000, got {value!r}")
    return value


def _quota(where: str, table: dict[str, Any], base: Quota) -> Quota:
    keeps, memory = base.max_keeps, base.max_memory
    if "max_keeps" in table:
        keeps = _count(where, "max_keeps", table["max_keeps"])
    if "max_memory" in table:
        raw = table["max_memory"]
        if isinstance(raw, bool) or not isinstance(raw, (int, str)):
            raise UsersFileError(f"{where}: max_memory must be a size like \"2GiB\" or a number of "
                                 f"bytes, got {raw!r}")
        try:
            memory = parse_size(str(raw))
        except ValueError as exc:
            raise UsersFileError(f"{where}: max_memory: {exc}") from None
    return Quota(max_keeps=keeps, max_memory=memory)


def _user(where: str, entry: Any, base: Quota, folder: Path) -> Principal:
    if not isinstance(entry, dict):
        raise UsersFileError(f"{where}: each [[user]] must be a table")
    unknown = set(entry) - USER_KEYS
    if unknown:
        raise UsersFileError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; a user has "
                             f"{', '.join(sorted(USER_KEYS))}")
    name = entry.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise UsersFileError(f"{where}: name must be 1-64 letters, digits, '.', '_', '@' or '-' "
                             f"(starting with a letter or digit), got {name!r}")
    where = f"{where} ({name})"
    has_file, has_hash = "token_file" in entry, "token_sha256" in entry
    if has_file == has_hash:
        raise UsersFileError(f"{where}: give exactly one of token_file (a file with the token) "
                             "or token_sha256 (the token's SHA-256 in hex)")
    token_file = None
    if has_file:
        if not isinstance(entry["token_file"], str) or not entry["token_file"].strip():
            raise UsersFileError(f"{where}: token_file must be a path")
        token_file = (folder / Path(entry["token_file"]).expanduser())
        try:
            token, token_file = load_or_make_token(token_file, folder)
        except OSError as exc:
            raise UsersFileError(f"{where}: cannot read or make token file {token_file}: "
                                 f"{exc.strerror or exc}") from None
        except SystemExit as exc:
            raise UsersFileError(f"{where}: {exc}") from None
        digest = token_digest(token)
    else:
        digest = str(entry["token_sha256"]).strip().lower()
        if not _HEX64.match(digest):
            raise UsersFileError(f"{where}: token_sha256 must be 64 hex digits (the output of "
                                 "`sha256sum` on the token, without the newline)")
    return Principal(name=name, digest=digest, quota=_quota(where, entry, base), token_file=token_file)


def parse_users(text: str, source: str, folder: Path) -> Roster:
    """The users file's text → a :class:`Roster`.  ``folder`` anchors relative token files."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsersFileError(f"users file {source} is not valid TOML: {exc}") from None
    unknown = set(raw) - TOP_KEYS
    if unknown:
        raise UsersFileError(f"users file {source}: unknown key(s) {', '.join(sorted(unknown))}; "
                             f"known: {', '.join(sorted(TOP_KEYS))}")
    total = raw.get("max_keeps_total")
    if total is not None:
        total = _count(f"users file {source}", "max_keeps_total", total)
    defaults = raw.get("defaults", {})
    if not isinstance(defaults, dict) or set(defaults) - QUOTA_KEYS:
        raise UsersFileError(f"users file {source}: [defaults] may hold only "
                             f"{', '.join(sorted(QUOTA_KEYS))}")
    base = _quota(f"users file {source} [defaults]", defaults, Quota())
    entries = raw.get("user", [])
    if not isinstance(entries, list) or not entries:
        raise UsersFileError(f"users file {source}: no users — add a [[user]] table per person")
    if len(entries) > MAX_USERS:
        raise UsersFileError(f"users file {source}: {len(entries)} users; at most {MAX_USERS}")
    users = [_user(f"users file {source}, user {i + 1}", e, base, folder)
             for i, e in enumerate(entries)]
    _no_twins(users, source)
    return Roster(principals=tuple(users), max_keeps_total=total, source=source)


def _no_twins(users: list[Principal], source: str) -> None:
    """Two users with one name or one token could not be told apart: refuse the file."""
    seen_names: dict[str, int] = {}
    seen_tokens: dict[str, str] = {}
    for u in users:
        if u.name in seen_names:
            raise UsersFileError(f"users file {source}: user {u.name!r} is listed twice")
        seen_names[u.name] = 1
        if u.digest in seen_tokens:
            raise UsersFileError(f"users file {source}: users {seen_tokens[u.digest]!r} and "
                                 f"{u.name!r} have the same token; each user needs their own")
        seen_tokens[u.digest] = u.name


def load_users(path: str | os.PathLike) -> Roster:
    p = Path(path).expanduser()
    try:
        text = p.read_text()
    except OSError as exc:
        raise UsersFileError(f"cannot read users file {p}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise UsersFileError(f"users file {p} is not UTF-8 text") from None
    return parse_users(text, str(p), p.parent)


def roster(users_file: str | None, token_files: list[str], state_dir: Path) -> tuple[Roster, Path | None]:
    """Everyone from ``--users`` and ``--token-file`` (a token made in ``state_dir`` when neither
    is given); and the first ``--token-file`` (for the ready file)."""
    from_file = load_users(users_file) if users_file else None
    files: list[Path | None] = [Path(f) for f in token_files]
    if not files and from_file is None:
        files = [None]
    extra = []
    for i, f in enumerate(files):
        token, path = load_or_make_token(f, state_dir)
        extra.append(Principal(name=f"token-file-{i + 1}", digest=token_digest(token), token_file=path))
    principals = (*(from_file.principals if from_file else ()), *extra)
    both = Roster(principals=tuple(principals),
                  max_keeps_total=from_file.max_keeps_total if from_file else None,
                  source=from_file.source if from_file else "the command line")
    _no_twins(list(both.principals), both.source)
    return both, (extra[0].token_file if extra else None)


def describe(roster: Roster) -> str:
    """The users and their quotas, one line each (never a token)."""
    def limit(q: Quota) -> str:
        keeps = "any number of Keeps" if q.max_keeps is None else f"at most {q.max_keeps} Keeps"
        memory = "any memory" if q.max_memory is None else f"{format_size(q.max_memory)} of memory"
        return f"{keeps}, {memory}"
    lines = [f"keepbook keepmgr: {len(roster.principals)} users in {roster.source}"
             + (f", at most {roster.max_keeps_total} Keeps in all" if roster.max_keeps_total is not None else "")
             + ":"]
    lines += [f"  {p.name:<16} {limit(p.quota)}" + (f"  (token in {p.token_file})" if p.token_file else "")
              for p in roster.principals]
    return "\n".join(lines)
