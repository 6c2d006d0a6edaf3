"""Trusted queries: the one format of what ``keep.dp.*`` and ``keep.query(...)`` ask for.

The guest only *describes* a query (plain JSON through the Keep's door); the Keep's trusted side
— its own process, outside the interpreter the cell runs in — parses it here, evaluates it on
the sealed dataset itself and decides what leaves.  Shared and sans-IO: the parser holds no data
and no key.  Every refusal is a :class:`QueryError` naming the field and what to write instead.

A differentially private query (``keep.dp.count(...)`` etc.)::

    {"kind": "dp", "fn": "count" | "sum" | "mean" | "variance" | "histogram" | "quantile",
     "dataset": "patients.csv", "column": "age",      # column: all but count (rows) need one
     "epsilon": 0.1,                                   # this query's share of the budget, > 0
     "bounds": [0, 120],                               # sum, mean, variance, quantile: required
     "categories": ["a", "b"] | "bins": [18, 65],      # histogram: one of the two
     "q": 0.5, "candidates": 100}                      # quantile: which, among how many values

A threshold query (``keep.query(...)``)::

    {"kind": "aggregate", "dataset": "patients.csv", "by": ["ward"],
     "count": true, "sum": ["length_of_stay"], "mean": ["age"]}
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

DP_FUNCTIONS = ("count", "sum", "mean", "variance", "histogram", "quantile")
NEEDS_BOUNDS = ("sum", "mean", "variance", "quantile")
MAX_NAME = 128
MAX_CATEGORIES = 1000
MAX_BY = 4
MAX_AGGREGATES = 16
#: the largest magnitude of a bound (beyond it floating-point sums lose the noise)
MAX_BOUND = 1e12
#: the largest epsilon one query may ask for (the owner's budget caps it anyway)
MAX_QUERY_EPSILON = 100.0


class QueryError(ValueError):
    """The query is refused before anything is computed; the message names the field."""


@dataclass(frozen=True)
class DpQuery:
    fn: str
    dataset: str
    epsilon: float
    column: str | None = None
    bounds: tuple[float, float] | None = None
    categories: tuple[str, ...] | None = None
    bins: tuple[float, ...] | None = None
    q: float = 0.5
    candidates: int = 100

    def describe(self) -> str:
        """What was asked, in words (shown with the answer; only the analyst's own choices)."""
        what = f"{self.fn}({self.column})" if self.column else self.fn
        extra = []
        if self.bounds is not None:
            extra.append(f"bounds {_num(self.bounds[0])}..{_num(self.bounds[1])}")
        if self.fn == "quantile":
            extra.append(f"q={_num(self.q)}")
        if self.bins is not None:
            extra.append(f"bins at {', '.join(map(_num, self.bins))}")
        if self.categories is not None:
            extra.append(f"{len(self.categories)} categories")
        tail = f", {', '.join(extra)}" if extra else ""
        return f"{what} of {self.dataset}{tail}, ε={_num(self.epsilon)}"


@dataclass(frozen=True)
class AggregateQuery:
    dataset: str
    by: tuple[str, ...]
    count: bool = True
    sums: tuple[str, ...] = ()
    means: tuple[str, ...] = ()

    def describe(self) -> str:
        parts = (["count"] if self.count else []) + [f"sum({c})" for c in self.sums] + \
            [f"mean({c})" for c in self.means]
        return f"{', '.join(parts)} of {self.dataset} by {', '.join(self.by)}"


def parse(raw: Any) -> DpQuery | AggregateQuery:
    """A query description from the guest, checked field by field."""
    if not isinstance(raw, dict):
        raise QueryError("a query must be a map (describe it with keep.dp.* or keep.query)")
    kind = raw.get("kind")
    if kind == "dp":
        return _dp(raw)
    if kind == "aggregate":
        return _aggregate(raw)
    raise QueryError("query kind must be \"dp\" (keep.dp.*) or \"aggregate\" (keep.query)")


def _dp(raw: dict) -> DpQuery:
    _only(raw, {"kind", "fn", "dataset", "column", "epsilon", "bounds", "categories", "bins", "q",
                "candidates"})
    fn = raw.get("fn")
    if fn not in DP_FUNCTIONS:
        raise QueryError(f"keep.dp has {', '.join(DP_FUNCTIONS)}; not {_shown(fn)}")
    dataset = _name(raw.get("dataset"), "dataset")
    column = raw.get("column")
    if fn == "count":
        if column is not None:
            raise QueryError("keep.dp.count counts the dataset's rows; it takes no column")
    else:
        column = _name(column, f"keep.dp.{fn}: column")
    epsilon = raw.get("epsilon")
    if epsilon is None:
        raise QueryError(f"keep.dp.{fn}: epsilon is missing — each query spends its own share of "
                         "the owner's budget, e.g. epsilon=0.1")
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or \
            not math.isfinite(epsilon) or epsilon <= 0:
        raise QueryError(f"keep.dp.{fn}: epsilon must be a number above 0, not {_shown(epsilon)}")
    if epsilon > MAX_QUERY_EPSILON:
        raise QueryError(f"keep.dp.{fn}: epsilon {epsilon:g} is above {MAX_QUERY_EPSILON:g}")
    bounds = raw.get("bounds")
    if fn in NEEDS_BOUNDS or bounds is not None:
        bounds = _bounds(fn, bounds)
    categories = bins = None
    if fn == "histogram":
        categories, bins = _histogram(raw.get("categories"), raw.get("bins"))
    elif raw.get("categories") is not None or raw.get("bins") is not None:
        raise QueryError(f"keep.dp.{fn}: categories and bins belong to keep.dp.histogram")
    q, candidates = 0.5, 100
    if fn == "quantile":
        q = raw.get("q", 0.5)
        if isinstance(q, bool) or not isinstance(q, (int, float)) or not 0 < q < 1:
            raise QueryError(f"keep.dp.quantile: q must be between 0 and 1, not {_shown(q)}")
        candidates = raw.get("candidates", 100)
        if isinstance(candidates, bool) or not isinstance(candidates, int) or \
                not 2 <= candidates <= MAX_CATEGORIES:
            raise QueryError(f"keep.dp.quantile: candidates must be a whole number from 2 to "
                             f"{MAX_CATEGORIES}")
    return DpQuery(fn=fn, dataset=dataset, epsilon=float(epsilon), column=column, bounds=bounds,
                   categories=categories, bins=bins, q=float(q), candidates=candidates)


def _bounds(fn: str, bounds: Any) -> tuple[float, float]:
    if bounds is None:
        raise QueryError(f"keep.dp.{fn}: bounds are missing — give bounds=(lower, upper) that you "
                         "choose without looking at the data; values outside are clamped to them")
    if not isinstance(bounds, (list, tuple)) or len(bounds) != 2 or \
            any(isinstance(b, bool) or not isinstance(b, (int, float)) or not math.isfinite(b)
                for b in bounds):
        raise QueryError(f"keep.dp.{fn}: bounds must be two numbers (lower, upper)")
    lo, hi = float(bounds[0]), float(bounds[1])
    if not lo < hi:
        raise QueryError(f"keep.dp.{fn}: the lower bound must be below the upper bound")
    if max(abs(lo), abs(hi)) > MAX_BOUND:
        raise QueryError(f"keep.dp.{fn}: bounds must lie within ±{MAX_BOUND:g}")
    return lo, hi


def _histogram(categories: Any, bins: Any) -> tuple[tuple[str, ...] | None, tuple[float, ...] | None]:
    if (categories is None) == (bins is None):
        raise QueryError("keep.dp.histogram: give categories=[...] (the values to count, chosen "
                         "without looking at the data) or bins=[edges...], one of the two")
    if categories is not None:
        if not isinstance(categories, list) or not 1 <= len(categories) <= MAX_CATEGORIES or \
                not all(isinstance(c, str) and len(c) <= MAX_NAME for c in categories):
            raise QueryError(f"keep.dp.histogram: categories must be 1 to {MAX_CATEGORIES} short "
                             "texts")
        if len(set(categories)) != len(categories):
            raise QueryError("keep.dp.histogram: a category is listed twice")
        return tuple(categories), None
    if not isinstance(bins, list) or not 1 <= len(bins) < MAX_CATEGORIES or \
            any(isinstance(b, bool) or not isinstance(b, (int, float)) or not math.isfinite(b)
                for b in bins):
        raise QueryError(f"keep.dp.histogram: bins must be 1 to {MAX_CATEGORIES - 1} edges (numbers)")
    if any(b >= c for b, c in zip(bins, bins[1:])):
        raise QueryError("keep.dp.histogram: bin edges must increase")
    return None, tuple(float(b) for b in bins)


def _aggregate(raw: dict) -> AggregateQuery:
    _only(raw, {"kind", "dataset", "by", "count", "sum", "mean"})
    dataset = _name(raw.get("dataset"), "dataset")
    by = raw.get("by")
    if isinstance(by, str):
        by = [by]
    if not isinstance(by, list) or not 1 <= len(by) <= MAX_BY:
        raise QueryError(f"keep.query: by must name 1 to {MAX_BY} columns to group by")
    by = [_name(b, "keep.query: by") for b in by]
    count = raw.get("count", True)
    if not isinstance(count, bool):
        raise QueryError("keep.query: count must be True or False")
    lists = {}
    for key in ("sum", "mean"):
        cols = raw.get(key) or []
        if isinstance(cols, str):
            cols = [cols]
        if not isinstance(cols, list) or len(cols) > MAX_AGGREGATES:
            raise QueryError(f"keep.query: {key} must name up to {MAX_AGGREGATES} columns")
        lists[key] = tuple(_name(c, f"keep.query: {key}") for c in cols)
    if not count and not lists["sum"] and not lists["mean"]:
        raise QueryError("keep.query: ask for something — count=True, sum=[...] or mean=[...]")
    return AggregateQuery(dataset=dataset, by=tuple(by), count=count, sums=lists["sum"],
                          means=lists["mean"])


def _only(raw: dict, known: set[str]) -> None:
    extra = [k for k in raw if k not in known]
    if extra:
        raise QueryError(f"unknown field(s) {', '.join(_shown(k) for k in extra[:5])} in the "
                         f"query; known: {', '.join(sorted(known))}")


def _name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_NAME:
        raise QueryError(f"{what} must be a name (text of 1 to {MAX_NAME} characters)")
    return value


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _num(x: float) -> str:
    return f"{x:g}"
