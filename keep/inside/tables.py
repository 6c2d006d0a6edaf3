"""The sealed datasets the trusted queries read, inside the Keep: one CSV reader.

A dataset sealed with ``[data] access = "queries"`` is a file in the Keep's private directory
that no cell can open; only the trusted side (:mod:`keepbook.keep.inside.trusted`) reads it,
here.  Read once and kept as columns of text (the file is read-only: it cannot change).  Each
row of the file is one record; a row's fields are the columns of the header line."""

from __future__ import annotations

import csv
import io
import threading
from dataclasses import dataclass

#: the largest dataset the trusted side loads (its columns are held in memory)
MAX_TABLE_BYTES = 256 * 1024 * 1024
MAX_COLUMNS = 1024


class TableError(ValueError):
    """The dataset cannot be read as a table; the message says why (never a row)."""


@dataclass(frozen=True)
class Table:
    columns: tuple[str, ...]
    data: dict[str, list[str]]
    rows: int

    def column(self, name: str) -> list[str]:
        if name not in self.data:
            raise TableError(f"no column {name!r}; the columns are {', '.join(self.columns)}")
        return self.data[name]


def read_csv(raw: bytes) -> Table:
    """A CSV file (UTF-8, a header line, one record per line) as columns of text.  A short row
    is padded with empty fields and a long one cut to the header, so every row stays one record
    (a dropped row would change what a query counts without anyone seeing it)."""
    if len(raw) > MAX_TABLE_BYTES:
        raise TableError(f"the dataset is larger than {MAX_TABLE_BYTES} bytes, the most the "
                         "trusted queries read")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise TableError("the dataset is not UTF-8 text; the trusted queries read CSV") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise TableError("the dataset is empty: a CSV needs a header line") from None
    except csv.Error as exc:
        raise TableError(f"the dataset is not CSV: {exc}") from None
    header = [h.strip() for h in header]
    if not header or len(header) > MAX_COLUMNS or any(not h for h in header):
        raise TableError(f"the header line must name 1 to {MAX_COLUMNS} columns, none empty")
    if len(set(header)) != len(header):
        raise TableError("the header line names a column twice")
    data: dict[str, list[str]] = {h: [] for h in header}
    cols = list(data.values())
    width = len(header)
    rows = 0
    try:
        for record in reader:
            if not record:
                continue  # a blank line is not a record
            record = (record + [""] * width)[:width]
            for j in range(width):
                cols[j].append(record[j])
            rows += 1
    except csv.Error as exc:
        raise TableError(f"the dataset is not CSV after its header: {exc}") from None
    return Table(columns=tuple(header), data=data, rows=rows)


class TableCache:
    """Each dataset file read once (they are read-only)."""

    def __init__(self) -> None:
        self._tables: dict[str, Table] = {}
        self._lock = threading.Lock()

    def get(self, path: str) -> Table:
        with self._lock:
            table = self._tables.get(path)
            if table is None:
                with open(path, "rb") as fh:
                    table = self._tables[path] = read_csv(fh.read(MAX_TABLE_BYTES + 1))
            return table
