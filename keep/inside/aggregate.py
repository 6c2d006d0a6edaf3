"""``keep.query``: group-by aggregates computed by the Keep's trusted side on the dataset itself,
with every group of fewer than the owner's ``[query] min_group`` rows suppressed.

The counts come from the file, not from the analyst's code, so they cannot be forged.  What it
does not stop (docs/profiles-and-policy.md says so): *differencing* — two queries whose groups
differ by a few rows (by ward, then by ward and sex) can reveal the small difference a
suppressed group hides.  Differential privacy (``keep.dp``) is the answer to that."""

from __future__ import annotations

import math
from dataclasses import dataclass

from keepbook.keep.inside.tables import Table, TableError
from keepbook.keep.shared.queries import AggregateQuery

#: the most groups one answer shows
MAX_GROUPS = 1000


@dataclass
class Aggregate:
    """A table answer: ``columns``, ``index`` (group keys) and ``rows``; ``shown`` groups."""

    columns: list[str]
    index: list[str]
    rows: list[list]
    shown: int
    suppressed_any: bool


def run(q: AggregateQuery, table: Table, min_group: int) -> Aggregate:
    keys = [table.column(c) for c in q.by]
    sums = {c: table.column(c) for c in q.sums}
    means = {c: table.column(c) for c in q.means}
    groups: dict[tuple[str, ...], list[int]] = {}
    for i in range(table.rows):
        groups.setdefault(tuple(k[i] for k in keys), []).append(i)
    big = {g: idx for g, idx in groups.items() if len(idx) >= min_group}
    if len(big) > MAX_GROUPS:
        raise TableError(f"more than {MAX_GROUPS} groups of at least {min_group} rows: group by "
                         "fewer or coarser columns")
    columns = (["n"] if q.count else []) + [f"sum({c})" for c in q.sums] + \
        [f"mean({c})" for c in q.means]
    rows = []
    for g in sorted(big):
        idx = big[g]
        row: list = [len(idx)] if q.count else []
        row += [_total(sums[c], idx)[0] for c in q.sums]
        for c in q.means:
            total, n = _total(means[c], idx)
            row.append(round(total / n, 6) if n else None)
        rows.append(row)
    return Aggregate(columns=columns, index=[" / ".join(g) for g in sorted(big)], rows=rows,
                     shown=len(big), suppressed_any=len(big) < len(groups))


def _total(values: list[str], idx: list[int]) -> tuple[float, int]:
    """The sum of the values that are numbers, and how many there were (others are skipped)."""
    total, n = 0.0, 0
    for i in idx:
        try:
            v = float(values[i])
        except ValueError:
            continue
        if math.isfinite(v):
            total += v
            n += 1
    return round(total, 6), n
