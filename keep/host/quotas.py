"""Per-user quotas of a keep manager: Keeps per user, memory per user, Keeps in all.

Runs on the untrusted host.  Pure: the manager says who asks, what they already run and what
they ask for; :func:`refusal` answers with the limit that would be broken and the current use,
in words the user can act on — or None.  Memory is the Keeps' attested ``memory_bytes`` limits
added up: what a Keep may take, not what it took so far.
"""

from __future__ import annotations

from dataclasses import dataclass

from keepbook.keep.shared.sizes import format_size


@dataclass(frozen=True)
class Quota:
    """None = no limit."""

    max_keeps: int | None = None
    max_memory: int | None = None


@dataclass(frozen=True)
class Usage:
    keeps: int = 0
    memory: int = 0


def _keeps(n: int) -> str:
    return f"{n} Keep" + ("" if n == 1 else "s")


def refusal(user: str, quota: Quota, mine: Usage, ask_memory: int, everyone: int,
            max_total: int | None, source: str) -> str | None:
    """Why ``user`` may not start one more Keep with ``ask_memory`` bytes, or None if they may.
    The user's own limits are named first: those they can do something about."""
    if quota.max_keeps is not None and mine.keeps + 1 > quota.max_keeps:
        return (f"quota: {user} may run at most {_keeps(quota.max_keeps)} at once (max_keeps in "
                f"{source}) and runs {mine.keeps} now — close one first (`%keep list`, "
                "`%keep close ID`)")
    if quota.max_memory is not None and mine.memory + ask_memory > quota.max_memory:
        return (f"quota: {user} may hold at most {format_size(quota.max_memory)} of Keep memory "
                f"(max_memory in {source}); {user}'s {_keeps(mine.keeps)} hold "
                f"{format_size(mine.memory)} now and this one asks for {format_size(ask_memory)} — "
                "ask for less (`%keep new --memory 512MiB`) or close a Keep")
    if max_total is not None and everyone + 1 > max_total:
        return (f"quota: this keep manager runs at most {_keeps(max_total)} in all (max_keeps_total "
                f"in {source}) and {everyone} are running — try again when others have closed "
                "theirs, or ask the operator")
    return None
