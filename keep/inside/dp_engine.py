"""Differentially private answers, computed inside the Keep by OpenDP (PyPI ``opendp``).

The trusted side (:mod:`keepbook.keep.inside.trusted`) calls :func:`plan` to build OpenDP
measurements for a checked query (:class:`keepbook.keep.shared.queries.DpQuery`), charges
their privacy loss — OpenDP's own privacy map at the dataset's privacy unit — to the session's
budget, and only then runs them on the dataset's column.  The noise, the clamping, the casting
of text to numbers and the quantile's exponential mechanism are OpenDP's measurements, not code
of ours: OpenDP's floating-point Laplace resists the attacks on naive noise (Mironov 2012).

OpenDP marks these constructors "contrib" (proven, not yet vetted by its committee); the Keep
opts in with ``enable_features("contrib")`` as OpenDP's documentation requires, and says so in
every answer's mechanism text.  Every measurement is pure ε-DP (OpenDP's max-divergence): its
δ is 0.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable

from keepbook.keep.shared.queries import DpQuery

_dp: Any = None


def opendp() -> Any:
    """OpenDP's prelude, loaded on first use (a Keep that answers no DP query never loads it)."""
    global _dp
    if _dp is None:
        import opendp.prelude as dp

        dp.enable_features("contrib")
        _dp = dp
    return _dp


def version() -> str:
    from importlib import metadata

    try:
        return metadata.version("opendp")
    except metadata.PackageNotFoundError:
        return "absent"


@dataclass
class Plan:
    """Measurements for one query, their privacy loss, and how to turn outputs into the answer.
    ``run(column)`` evaluates them; later steps may depend on earlier outputs (variance)."""

    epsilon: float
    delta: float
    mechanism: str
    run: Callable[[list[str]], Any]


def plan(q: DpQuery, rows_per_person: int = 1) -> Plan:
    """OpenDP measurements for ``q`` whose privacy maps at ``rows_per_person`` add up to at
    most ``q.epsilon`` (checked here, with OpenDP's own maps)."""
    dp = opendp()
    d_in = int(rows_per_person)
    text = (dp.vector_domain(dp.atom_domain(T=str)), dp.symmetric_distance())
    builders = {"count": _count, "sum": _sum, "mean": _mean, "variance": _variance,
                "histogram": _histogram, "quantile": _quantile}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        steps, mechanism, finish = builders[q.fn](dp, q, text, d_in)
    spent = 0.0
    for meas, share in steps:
        if meas is None:
            spent += share  # a step built later, searched to this share (see _variance)
            continue
        loss = _pure_loss(dp, meas, d_in)
        if loss > share * (1 + 1e-9):
            raise ValueError(f"OpenDP's privacy map gives ε={loss!r} above the share {share!r}")
        spent += loss
    if spent > q.epsilon * (1 + 1e-9):
        raise ValueError(f"the query would spend ε={spent!r}, above the ε={q.epsilon!r} asked")
    return Plan(epsilon=q.epsilon, delta=0.0,
                mechanism=f"OpenDP {version()} (contrib): {mechanism}", run=finish)


def _pure_loss(dp: Any, meas: Any, d_in: int) -> float:
    """(ε) of a pure-DP measurement, through OpenDP's (ε, δ) view of it."""
    eps, delta = dp.c.make_approximate(meas).map(d_in)
    if delta != 0:
        raise ValueError("expected a pure ε-DP measurement")
    return float(eps)


def _search(dp: Any, make: Callable[[float], Any], d_in: int, epsilon: float) -> Any:
    """OpenDP's own search for the noise scale that spends exactly ``epsilon`` (or less)."""
    return dp.binary_search_chain(make, d_in=d_in, d_out=epsilon)


def _numbers(dp: Any, text: tuple, bounds: tuple[float, float]) -> Any:
    """Text → float (OpenDP's cast: what does not parse counts as 0.0, NaN is imputed with 0.0)
    → clamped into the bounds."""
    lo, hi = bounds
    zero = min(max(0.0, lo), hi)
    return (dp.t.make_cast_default(*text, TOA=float) >> dp.t.then_impute_constant(zero)
            >> dp.t.then_clamp((lo, hi)))


def _count(dp: Any, q: DpQuery, text: tuple, d_in: int) -> tuple:
    meas = _search(dp, lambda s: dp.t.make_count(*text) >> dp.m.then_laplace(s), d_in, q.epsilon)
    return ([(meas, q.epsilon)], "count of rows → discrete Laplace",
            lambda col: max(0, int(meas(col))))


def _sum(dp: Any, q: DpQuery, text: tuple, d_in: int) -> tuple:
    assert q.bounds is not None
    base = _numbers(dp, text, q.bounds) >> dp.t.then_sum()
    meas = _search(dp, lambda s: base >> dp.m.then_laplace(s), d_in, q.epsilon)
    return ([(meas, q.epsilon)], "cast → impute → clamp → sum → Laplace",
            lambda col: float(meas(col)))


def _mean(dp: Any, q: DpQuery, text: tuple, d_in: int) -> tuple:
    """Sum and count, half the budget each, composed by OpenDP; mean = sum / count (the row
    count stays private: no sized domain)."""
    assert q.bounds is not None
    half = q.epsilon / 2
    total = _search(dp, lambda s: _numbers(dp, text, q.bounds) >> dp.t.then_sum()
                    >> dp.m.then_laplace(s), d_in, half)
    count = _search(dp, lambda s: dp.t.make_count(*text) >> dp.m.then_laplace(s), d_in, half)
    both = dp.c.make_composition([total, count])
    lo, hi = q.bounds

    def finish(col: list[str]) -> float:
        s, n = both(col)
        return min(max(float(s) / max(int(n), 1), lo), hi)
    return ([(both, q.epsilon)], "composition of (cast → impute → clamp → sum → Laplace) and "
            "(count → discrete Laplace), ε/2 each; mean = sum / count", finish)


def _variance(dp: Any, q: DpQuery, text: tuple, d_in: int) -> tuple:
    """A private row count (ε/2) sizes the data (OpenDP's resize), then OpenDP's sample
    variance with Laplace noise (ε/2): two measurements, charged together up front."""
    assert q.bounds is not None
    half = q.epsilon / 2
    lo, hi = q.bounds
    count = _search(dp, lambda s: dp.t.make_count(*text) >> dp.m.then_laplace(s), d_in, half)

    def finish(col: list[str]) -> float:
        n = max(int(count(col)), 2)
        sized = (_numbers(dp, text, q.bounds) >> dp.t.then_resize(size=n, constant=(lo + hi) / 2)
                 >> dp.t.then_variance())
        var = _search(dp, lambda s: sized >> dp.m.then_laplace(s), d_in, half)
        if _pure_loss(dp, var, d_in) > half * (1 + 1e-9):
            raise ValueError("OpenDP's variance step spends more than its share")
        return min(max(float(var(col)), 0.0), ((hi - lo) / 2) ** 2)
    return ([(count, half), (None, half)], "count → discrete Laplace (ε/2); cast → impute → "
            "clamp → resize to the private count → variance → Laplace (ε/2)", finish)


def _histogram(dp: Any, q: DpQuery, text: tuple, d_in: int) -> tuple:
    if q.categories is not None:
        cats = list(q.categories)
        base = dp.t.make_count_by_categories(*text, categories=cats, null_category=True)
        labels = cats + ["(other)"]
        what = "count by categories (the rest as '(other)') → discrete Laplace"
    else:
        assert q.bins is not None
        edges = list(q.bins)
        wide = (min(edges[0], 0.0) - 1.0, max(edges[-1], 0.0) + 1.0)
        base = (_numbers(dp, text, wide) >> dp.t.then_find_bin(edges=edges)
                >> dp.t.then_count_by_categories(categories=list(range(len(edges) + 1)),
                                                 null_category=False))
        labels = [f"< {_g(edges[0])}"] + [f"{_g(a)} to < {_g(b)}" for a, b in zip(edges, edges[1:])] \
            + [f">= {_g(edges[-1])}"]
        what = "cast → impute → bin → count by bin → discrete Laplace"
    meas = _search(dp, lambda s: base >> dp.m.then_laplace(s), d_in, q.epsilon)

    def finish(col: list[str]) -> dict[str, int]:
        counts = meas(col)
        return {label: max(0, int(c)) for label, c in zip(labels, counts)}
    return [(meas, q.epsilon)], what, finish


def _quantile(dp: Any, q: DpQuery, text: tuple, d_in: int) -> tuple:
    assert q.bounds is not None
    lo, hi = q.bounds
    k = q.candidates
    cands = [lo + (hi - lo) * i / (k - 1) for i in range(k)]
    base = _numbers(dp, text, q.bounds)
    meas = _search(dp, lambda s: base >> dp.m.then_private_quantile(
        dp.max_divergence(), candidates=cands, alpha=q.q, scale=s), d_in, q.epsilon)
    return ([(meas, q.epsilon)], f"cast → impute → clamp → exponential mechanism over {k} "
            "candidates", lambda col: float(meas(col)))


def _g(x: float) -> str:
    return f"{x:g}" if math.isfinite(x) else str(x)
