"""``keep.dp.*`` and ``keep.query``: the guest's side of the Keep's trusted queries.  NOT
imported on the host.

These functions only *describe* a query (the format is ``keep/shared/queries.py``) and send it
through the door (:func:`door.ask`); the Keep's trusted side — the Keep's own process, not this
interpreter — evaluates it on the sealed dataset, releases the answer itself, and sends the same
answer back here (post-processing cannot weaken differential privacy).  A refusal comes back as
``PermissionError`` with the Keep's reason; the notebook sees the same reason as a notice.
"""

from . import door


def _plain(x):
    """JSON for the query's own parameters (numpy scalars become numbers)."""
    item = getattr(x, "item", None)
    return item() if callable(item) else str(x)


def _ask(query):
    answer = door.ask({"op": "query", "query": query}, default=_plain)
    if not answer.get("ok"):
        raise PermissionError(answer.get("reason") or "refused by the Keep")
    return answer.get("value")


def _dp(fn, dataset, column=None, *, epsilon, bounds=None, **extra):
    query = {"kind": "dp", "fn": fn, "dataset": dataset, "epsilon": epsilon}
    if column is not None:
        query["column"] = column
    if bounds is not None:
        query["bounds"] = [float(b) for b in bounds]
    query.update({k: v for k, v in extra.items() if v is not None})
    return _ask(query)


class DP:
    """keep.dp: differentially private answers, computed by the Keep (OpenDP) on a dataset
    sealed with ``[data] access = "queries"``; each spends ``epsilon`` of the owner's budget."""

    @staticmethod
    def count(dataset, *, epsilon):
        """How many rows the dataset has (noisy)."""
        return _dp("count", dataset, epsilon=epsilon)

    @staticmethod
    def sum(dataset, column, *, bounds, epsilon):
        """The sum of a column, each value clamped into ``bounds`` (chosen without the data)."""
        return _dp("sum", dataset, column, epsilon=epsilon, bounds=bounds)

    @staticmethod
    def mean(dataset, column, *, bounds, epsilon):
        """The mean of a column, each value clamped into ``bounds``."""
        return _dp("mean", dataset, column, epsilon=epsilon, bounds=bounds)

    @staticmethod
    def variance(dataset, column, *, bounds, epsilon):
        """The variance of a column, each value clamped into ``bounds``."""
        return _dp("variance", dataset, column, epsilon=epsilon, bounds=bounds)

    @staticmethod
    def histogram(dataset, column, *, epsilon, categories=None, bins=None):
        """Counts per category (the rest as '(other)'), or per bin between numeric edges."""
        return _dp("histogram", dataset, column, epsilon=epsilon,
                   categories=list(categories) if categories is not None else None,
                   bins=[float(b) for b in bins] if bins is not None else None)

    @staticmethod
    def quantile(dataset, column, q=0.5, *, bounds, epsilon, candidates=100):
        """The ``q`` quantile of a column, chosen among ``candidates`` points within ``bounds``."""
        return _dp("quantile", dataset, column, epsilon=epsilon, bounds=bounds, q=float(q),
                   candidates=int(candidates))


def query(dataset, by, *, count=True, sum=(), mean=()):
    """Group ``dataset`` by ``by`` and count / sum / average, computed by the Keep on the
    dataset itself; groups smaller than the owner's minimum are not shown."""
    value = _ask({"kind": "aggregate", "dataset": dataset,
                  "by": [by] if isinstance(by, str) else list(by), "count": bool(count),
                  "sum": [sum] if isinstance(sum, str) else list(sum),
                  "mean": [mean] if isinstance(mean, str) else list(mean)})
    try:
        import pandas as pd
    except ImportError:
        return value
    return pd.DataFrame(value["rows"], columns=value["columns"], index=value["index"])
