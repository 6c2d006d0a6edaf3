"""The Keep's trusted side for queries: ``keep.dp.*`` and ``keep.query(...)`` are answered here,
in the Keep's own process — never in the interpreter the analyst's cell runs in.

The guest sends a description through the door (:mod:`keepbook.keep.shared.queries`); this
service checks who may read what, charges the owner's privacy budget
(:mod:`keepbook.keep.inside.budget`), evaluates the query on the sealed dataset's own file with
OpenDP (:mod:`keepbook.keep.inside.dp_engine`) or the threshold aggregate
(:mod:`keepbook.keep.inside.aggregate`), records it in the audit log, and returns the answer:
one copy for the guest (post-processing cannot weaken DP) and one the output gate releases to
the notebook, labelled by the Keep.

Which data it reads: only datasets sealed with ``[data] access = "queries"``, which live in a
directory of the Keep that no cell can open.  And only while no dataset of this Keep is readable
by the analyst's code in a Keep whose outputs are restricted (production, or release required):
the query's own parameters — bounds, ε, columns, even whether to ask — are chosen by that code,
and could carry rows of a readable dataset out past its owner's rules."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from keepbook.keep.inside import aggregate, dp_engine
from keepbook.keep.inside.budget import Accountant, BudgetExceeded
from keepbook.keep.inside.output_gate import AUDIT_FULL_WHY
from keepbook.keep.inside.tables import TableCache, TableError
from keepbook.keep.shared import queries
from keepbook.keep.shared.policy import OutputPolicy

Audit = Callable[[str, dict], Any]


@dataclass(frozen=True)
class Dataset:
    name: str
    path: str
    digest: str
    owner: str
    policy: OutputPolicy   # the owner's policy met with the Keep's own

    @property
    def queries_only(self) -> bool:
        return self.policy.data_access == "queries"


@dataclass
class Answer:
    """``ok``: ``value`` goes back to the guest, ``release`` (event content) to the notebook;
    otherwise ``reason`` says why it was refused (nothing charged, nothing released)."""

    ok: bool
    value: Any = None
    release: dict | None = None
    reason: str = ""


@dataclass
class TrustedQueries:
    keep_policy: OutputPolicy
    audit: Audit = lambda kind, entry: True
    #: does the Keep restrict outputs now (production, or release required)?
    strict: Callable[[], bool] = lambda: True
    accountant: Accountant = field(default_factory=Accountant)
    datasets: dict[str, Dataset] = field(default_factory=dict)
    tables: TableCache = field(default_factory=TableCache)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # ------------------------------------------------------------------ datasets
    def add(self, name: str, path: str, digest: str, owner: str, policy: OutputPolicy) -> Dataset:
        """A dataset opened in the Keep (called by the upload, after every check passed)."""
        effective = self.keep_policy.meet(policy)
        effective = _with_access(effective, policy.data_access)
        ds = Dataset(name=name, path=path, digest=digest, owner=owner, policy=effective)
        with self._lock:
            self.datasets[name] = ds
            if ds.queries_only and effective.dp_epsilon > 0:
                self.accountant.open(digest, effective.dp_epsilon, effective.dp_delta)
        return ds

    def readable(self) -> list[str]:
        """Names of the datasets the analyst's code can read (files under /data)."""
        return sorted(n for n, d in self.datasets.items() if not d.queries_only)

    def budgets(self) -> dict[str, dict]:
        """Each queries-only dataset's DP budget: total, spent, remaining (``%keep status``)."""
        out = {}
        for name, ds in sorted(self.datasets.items()):
            b = self.accountant.budgets.get(ds.digest)
            if ds.queries_only and b is not None:
                out[name] = b.summary()
        return out

    # ------------------------------------------------------------------ answering
    def answer(self, raw: Any) -> Answer:
        """One query from the guest; never raises for anything the guest sent."""
        kind = raw.get("kind") if isinstance(raw, dict) else None
        what = "keep.query" if kind == "aggregate" else "keep.dp"
        readable = self.readable()
        if readable and self.strict():
            # refused before the query is even read: its fields could be made of those rows
            return self._refuse(what, f"{what} answers only in a Keep whose datasets the "
                                "analyst's code cannot read, and your code can read "
                                f"{', '.join('/data/' + n for n in readable)}: its choice of "
                                "query (bounds, ε, columns) could carry those rows out. Use a "
                                "Keep holding only datasets sealed with [data] access = "
                                "\"queries\"")
        try:
            q = queries.parse(raw)
        except queries.QueryError as exc:
            return self._refuse(what, str(exc))
        ds = self.datasets.get(q.dataset.removeprefix("/data/"))
        if ds is None:
            names = ", ".join(n for n, d in sorted(self.datasets.items()) if d.queries_only)
            return self._refuse(what, f"no dataset {q.dataset!r} for trusted queries in this Keep"
                                f"{' (there are: ' + names + ')' if names else ''}")
        if not ds.queries_only:
            return self._refuse(what, f"{ds.name} is a file the analyst's code reads; {what} "
                                "answers only over datasets sealed with [data] access = "
                                "\"queries\"")
        try:
            table = self.tables.get(ds.path)
            if isinstance(q, queries.DpQuery):
                return self._dp(q, ds, table)
            return self._aggregate(q, ds, table)
        except TableError as exc:
            return self._refuse(what, f"{ds.name}: {exc}")

    def _dp(self, q: queries.DpQuery, ds: Dataset, table: Any) -> Answer:
        if ds.policy.dp_epsilon <= 0:
            return self._refuse("keep.dp", f"the owner of {ds.name} gave no privacy budget "
                                "([dp] epsilon in their policy): no differentially private answers")
        column = table.column(q.column) if q.column else table.column(table.columns[0])
        try:
            plan = dp_engine.plan(q, ds.policy.dp_rows_per_person)
        except ImportError:
            return self._refuse("keep.dp", "this Keep has no OpenDP (the VM Keep image does not "
                                "carry it yet): no differentially private answers here")
        except ValueError as exc:
            return self._refuse("keep.dp", f"OpenDP could not build this query: {exc}")
        try:
            budget = self.accountant.charge(ds.digest, plan.epsilon, plan.delta)
        except BudgetExceeded as exc:
            return self._refuse("keep.dp", f"{ds.name}: {exc}")
        left_e, left_d = budget.remaining()
        entry = {"dataset": ds.name, "digest": ds.digest, "query": q.describe(),
                 "epsilon": plan.epsilon, "delta": plan.delta, "remaining_epsilon": left_e,
                 "remaining_delta": left_d, "mechanism": plan.mechanism}
        if self.audit("dp-charge", entry) is False:  # recorded before anything is computed
            return Answer(ok=False, reason=f"keep.dp refused: {AUDIT_FULL_WHY} (its ε counts as "
                                           "spent)")
        value = plan.run(column)   # charged first: a failure here still counts as spent
        meta = {"dp": {**entry, "fn": q.fn}}
        note = (f"differentially private {q.describe()} — computed in the Keep by "
                f"{plan.mechanism}; ε={left_e:g} of {float(budget.epsilon):g} left")
        return Answer(ok=True, value=value, release={"value": _form(value), "note": note,
                                                     "keepbook": meta})

    def _aggregate(self, q: queries.AggregateQuery, ds: Dataset, table: Any) -> Answer:
        minimum = ds.policy.query_min_group
        if minimum <= 0:
            return self._refuse("keep.query", f"the owner of {ds.name} set no minimum group size "
                                "([query] min_group in their policy): no threshold queries")
        agg = aggregate.run(q, table, minimum)
        entry = {"dataset": ds.name, "digest": ds.digest, "query": q.describe(),
                 "min_group": minimum, "groups_shown": agg.shown}
        if self.audit("query", entry) is False:
            return Answer(ok=False, reason=f"keep.query refused: {AUDIT_FULL_WHY}")
        value = {"type": "table", "columns": agg.columns, "index": agg.index, "rows": agg.rows}
        note = (f"{q.describe()} — computed in the Keep from the dataset itself; groups of fewer "
                f"than {minimum} rows are not shown")
        guest = {"columns": agg.columns, "index": agg.index, "rows": agg.rows}
        return Answer(ok=True, value=guest, release={"value": value, "note": note,
                                                     "keepbook": {"query": entry}})

    def _refuse(self, what: str, reason: str) -> Answer:
        self.audit("query-refused", {"what": what, "reason": reason[:512]})
        return Answer(ok=False, reason=f"{what} refused: {reason}")


def _with_access(policy: OutputPolicy, access: str) -> OutputPolicy:
    from dataclasses import replace

    return replace(policy, data_access=access)


def _form(value: Any) -> dict:
    """The released form (:func:`keepbook.keep.shared.policy.check_value`) of a DP answer."""
    if isinstance(value, dict):
        return {"type": "mapping", "value": value}
    return {"type": "number", "value": value}
