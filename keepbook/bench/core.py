"""The bench's data model: a measured quantity with its baseline, repeated, summarised as median
and spread; rows in the exact JSON shape of issue 7; the printed table.

A row compares ``value`` (keepbook) with ``baseline`` (the thing to beat, measured in the same
run where possible) in the same unit; ``ratio`` is value/baseline.  The ``goal`` applies to the
ratio for rows whose name ends in ``_ratio`` and to the value otherwise — ``met`` says whether it
held.  A row that could not be measured has ``value: null`` and ``met: null``, and its note says
why; nothing is ever filled in with a guess."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass
class Sample:
    """Repeated measurements of one quantity."""

    values: list[float] = field(default_factory=list)

    def add(self, v: float) -> None:
        self.values.append(float(v))

    @property
    def median(self) -> float | None:
        return statistics.median(self.values) if self.values else None

    def spread(self) -> str:
        """min–max around the median, in the sample's own unit (empty for a single value)."""
        if len(self.values) < 2:
            return ""
        return f"{_fmt(min(self.values))}–{_fmt(max(self.values))}, n={len(self.values)}"


def repeat(fn: Callable[[], float], n: int) -> Sample:
    s = Sample()
    for _ in range(n):
        s.add(fn())
    return s


def timed(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


@dataclass
class Goal:
    """``value <= limit`` (or ``>=`` when ``at_least``), applied to the ratio or the value."""

    limit: float
    on_ratio: bool
    at_least: bool = False
    unit: str = ""

    def text(self) -> str:
        op = "≥" if self.at_least else "≤"
        return f"{op} {_fmt(self.limit)}{'×' if self.on_ratio else (' ' + self.unit if self.unit else '')}"

    def met(self, value: float | None, ratio: float | None) -> bool | None:
        x = ratio if self.on_ratio else value
        if x is None:
            return None
        return x >= self.limit if self.at_least else x <= self.limit


@dataclass
class Row:
    name: str
    unit: str
    value: Sample | float | None
    baseline: Sample | float | None
    goal: Goal | None = None
    note: str = ""
    baseline_label: str = ""

    def _v(self, x: Sample | float | None) -> float | None:
        return x.median if isinstance(x, Sample) else x

    @property
    def ratio(self) -> float | None:
        v, b = self._v(self.value), self._v(self.baseline)
        if v is None or b is None or b == 0:
            return None
        return v / b

    def to_json(self) -> dict:
        v, b, r = self._v(self.value), self._v(self.baseline), self.ratio
        return {"name": self.name, "value": _round(v), "unit": self.unit, "baseline": _round(b),
                "ratio": _round(r), "goal": self.goal.text() if self.goal else None,
                "met": self.goal.met(v, r) if self.goal else None}

    def spreads(self) -> dict:
        out = {}
        if isinstance(self.value, Sample):
            out["value"] = self.value.values
        if isinstance(self.baseline, Sample):
            out["baseline"] = self.baseline.values
        return out


#: Every row's goal, in one place (issue 17's targets where it set one; issue 7's otherwise).
#: ``_ratio`` rows: the goal applies to the ratio; other rows: to the value.
GOALS: dict[str, Goal] = {
    "verify_snp_ms": Goal(5.0, False, unit="ms"),
    "verify_tdx_vs_dcap_qvl_ratio": Goal(1.0, True),
    "verify_sgx_vs_dcap_qvl_ratio": Goal(1.0, True),
    "upload_vs_tls_ratio": Goal(0.8, True, at_least=True),
    "first_result_cold_s": Goal(0.3, False, unit="s"),
    "first_result_warm_s": Goal(0.1, False, unit="s"),
    "first_result_cold_python_s": Goal(0.5, False, unit="s"),
    "first_result_warm_python_s": Goal(0.05, False, unit="s"),
    "rtt_wat_ratio": Goal(2.0, True),
    "rtt_python_ratio": Goal(3.0, True),
    "c_vs_native_ratio": Goal(1.1, True),
    "c_vs_wasmtime_ratio": Goal(1.05, True),
    "python_loop_vs_native_ratio": Goal(3.0, True),
    "python_bigint_loop_vs_native_ratio": Goal(3.0, True),
    "python_fib_vs_native_ratio": Goal(3.0, True),
    "numpy_pandas_vs_native_ratio": Goal(1.3, True),
    "idle_python_keep_mb": Goal(100, False, unit="MB"),
    "idle_python_keep_pss_mb": Goal(100, False, unit="MB"),
    "python_keeps_capacity": Goal(20, False, at_least=True, unit="Keeps"),
}


def goal(name: str) -> Goal | None:
    """The goal of row ``name`` (None: the row is reported, with no goal)."""
    return GOALS.get(name)


def not_measured(name: str, unit: str, goal: Goal | None, why: str) -> Row:
    return Row(name, unit, None, None, goal, note=f"not measured: {why}")


def _round(x: float | None) -> float | None:
    if x is None:
        return None
    return float(f"{x:.4g}")


def _fmt(x: float | None) -> str:
    if x is None:
        return "—"
    if x == 0:
        return "0"
    if abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 1:
        return f"{x:.2f}"
    return f"{x:.3g}"


def table(rows: list[Row]) -> str:
    """The printed table: value and baseline side by side, each with its spread."""
    head = ("row", "value", "spread", "baseline", "spread", "ratio", "goal", "met")
    lines = []
    for r in rows:
        j = r.to_json()
        vs = r.value.spread() if isinstance(r.value, Sample) else ""
        bs = r.baseline.spread() if isinstance(r.baseline, Sample) else ""
        met = {True: "yes", False: "NO", None: "—"}[j["met"]]
        lines.append((r.name, f"{_fmt(j['value'])} {r.unit}" if j["value"] is not None else "—",
                      vs, f"{_fmt(j['baseline'])} {r.unit}" if j["baseline"] is not None else "—",
                      bs, f"{_fmt(j['ratio'])}×" if j["ratio"] is not None else "—",
                      j["goal"] or "—", met))
    widths = [max(len(h), *(len(l[i]) for l in lines)) for i, h in enumerate(head)]
    out = ["  ".join(h.ljust(w) for h, w in zip(head, widths)),
           "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(l, widths)) for l in lines]
    notes = [f"  {r.name}: baseline = {r.baseline_label}" + (f"; {r.note}" if r.note else "")
             for r in rows if r.note or r.baseline_label]
    if notes:
        out += ["", "notes:"] + notes
    return "\n".join(out)


def markdown(rows: list[Row]) -> str:
    """The same table as Markdown, for docs/PERFORMANCE.md."""
    out = ["| row | value (median, min–max) | baseline (median, min–max) | ratio | goal | met |",
           "|---|---|---|---|---|---|"]
    for r in rows:
        j = r.to_json()
        vs = r.value.spread() if isinstance(r.value, Sample) else ""
        bs = r.baseline.spread() if isinstance(r.baseline, Sample) else ""
        v = f"{_fmt(j['value'])} {r.unit}" + (f" ({vs})" if vs else "") if j["value"] is not None else "not measured"
        b = f"{_fmt(j['baseline'])} {r.unit}" + (f" ({bs})" if bs else "") if j["baseline"] is not None else "—"
        met = {True: "yes", False: "**no**", None: "—"}[j["met"]]
        ratio = f"{_fmt(j['ratio'])}×" if j["ratio"] is not None else "—"
        out.append(f"| `{r.name}` | {v} | {b} | {ratio} | {j['goal'] or '—'} | {met} |")
    return "\n".join(out)
