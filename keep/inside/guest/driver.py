"""The in-guest half of keepbook's Python session.  NOT imported on the host.

Its source is executed once in each fresh CPython-in-Wasm session (the first turn).  It turns
each cell into Jupyter messages and sends them to the Keep through the host door
(``_host.call``), one JSON frame per message, while the cell runs:

* ``sys.stdout``/``sys.stderr`` are replaced by streams that send text through the door
  (coalesced: a flush at most every 20 ms, or on 32 KiB, and always at cell end);
* the last expression of a cell is an ``execute_result`` with rich reprs (``_repr_html_`` …);
* ``display(...)`` and the ``keep`` module (``keep.display``, ``keep.release`` — the Keep's
  policy engine, outside this interpreter, decides what leaves);
* matplotlib uses the ``module://keep._mpl`` backend (Agg): ``plt.show()`` and the implicit
  display at cell end send PNGs;
* ``input()`` raises a clear error;
* the door's answer carries the host's wishes: ``I`` = interrupt, ``D`` = deadline (raised as
  KeyboardInterrupt / TimeoutError at the next door call, so state survives when the cell
  prints or sleeps), ``T`` = output cap reached (stop sending stream text).
"""

import ast
import base64
import builtins
import io
import json
import linecache
import os
import sys
import time
import traceback
import types

import _host

_STATE = {"cell": 0, "quiet": False, "last_flush": 0.0, "ns": None}
_DRIVER_FILE = "<keep-driver>"


class KeepExit(BaseException):
    """exit()/quit() in a cell: end the session on purpose (the Keep announces it)."""


def _send(msg):
    answer = _host.call(json.dumps(msg, separators=(",", ":")).encode("utf-8"))
    _obey(answer)


def _poll():
    _flush_streams()
    _obey(_host.call(b'{"op":"poll"}'))


def _obey(answer):
    if not answer or answer == b".":
        return
    if answer == b"T":
        _STATE["quiet"] = True
    elif answer == b"I":
        raise KeyboardInterrupt("interrupted by the user")
    elif answer == b"D":
        raise TimeoutError("the cell ran past its deadline")


class _Stream(io.TextIOBase):
    """A text stream that sends its writes through the door (coalesced)."""

    def __init__(self, name):
        self.name = name
        self._buf = []
        self._size = 0

    def writable(self):
        return True

    @property
    def encoding(self):
        return "utf-8"

    def isatty(self):
        return False

    def write(self, text):
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        if not text:
            return 0
        if _STATE["quiet"]:
            return len(text)
        self._buf.append(text)
        self._size += len(text)
        if self._size >= 32768:
            self.flush()
        elif "\n" in text and time.monotonic() - _STATE["last_flush"] >= 0.02:
            self.flush(whole_lines=True)
        return len(text)

    def flush(self, whole_lines=False):
        if not self._buf:
            return
        text = "".join(self._buf)
        rest = ""
        if whole_lines:
            cut = text.rfind("\n") + 1
            text, rest = text[:cut], text[cut:]
        self._buf, self._size = ([rest], len(rest)) if rest else ([], 0)
        _STATE["last_flush"] = time.monotonic()
        if text and not _STATE["quiet"]:
            _send({"op": "stream", "name": self.name, "text": text})


def _flush_streams():
    for s in (sys.stdout, sys.stderr):
        if isinstance(s, _Stream):
            s.flush()


# ---------------------------------------------------------------------------- rich reprs

_MIMES = (
    ("_repr_html_", "text/html"),
    ("_repr_markdown_", "text/markdown"),
    ("_repr_svg_", "image/svg+xml"),
    ("_repr_png_", "image/png"),
    ("_repr_jpeg_", "image/jpeg"),
    ("_repr_latex_", "text/latex"),
    ("_repr_json_", "application/json"),
)


def _jsonable(mime, value):
    if isinstance(value, (bytes, bytearray)):
        if mime.startswith("image/") and mime != "image/svg+xml":
            return base64.b64encode(bytes(value)).decode("ascii")
        return bytes(value).decode("utf-8", "replace")
    return value


def _figure_png(fig):
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _bundle(obj):
    """(data, metadata) for one object, as IPython's display formatter would build it."""
    data, meta = {}, {}
    mpl_figure = sys.modules.get("matplotlib.figure")
    if mpl_figure is not None and isinstance(obj, mpl_figure.Figure):
        data["image/png"] = _figure_png(obj)
    method = getattr(obj, "_repr_mimebundle_", None)
    if callable(method) and not isinstance(obj, type):
        try:
            got = method()
            if isinstance(got, tuple):
                got, m = got
                meta.update(m or {})
            for k, v in (got or {}).items():
                data[k] = _jsonable(k, v)
        except Exception:
            pass
    for attr, mime in _MIMES:
        if mime in data or isinstance(obj, type):
            continue
        method = getattr(obj, attr, None)
        if not callable(method):
            continue
        try:
            value = method()
        except Exception:
            continue
        if value is None:
            continue
        if isinstance(value, tuple):
            value, m = value
            meta[mime] = m
        data[mime] = _jsonable(mime, value)
    if "text/plain" not in data:
        try:
            data["text/plain"] = repr(obj)
        except Exception as e:
            data["text/plain"] = f"<repr failed: {type(e).__name__}: {e}>"
    return data, meta


def display(*objs, raw=False, metadata=None, **_ignored):
    """Show objects in the notebook, as IPython's display() does."""
    _flush_streams()
    for obj in objs:
        if raw and isinstance(obj, dict):
            data, meta = obj, metadata or {}
        else:
            data, meta = _bundle(obj)
            if metadata:
                meta.update(metadata)
        _send({"op": "display", "data": data, "metadata": meta})


def _show_figures():
    """Send every open matplotlib figure as a PNG, then close them (plt.show() / cell end)."""
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is None:
        return
    _flush_streams()
    for num in list(plt.get_fignums()):
        fig = plt.figure(num)
        try:
            png = _figure_png(fig)
        finally:
            plt.close(fig)
        _send({"op": "display", "data": {"image/png": png,
                                          "text/plain": f"<Figure {num}>"}, "metadata": {}})


_MPL_BACKEND = '''
from matplotlib.backends.backend_agg import FigureCanvasAgg as FigureCanvas
from matplotlib.backend_bases import FigureManagerBase as FigureManager

def show(*args, **kwargs):
    __keep_show()
'''


class _BackendFinder:
    """Finds ``keep._mpl``, the matplotlib backend, without importing matplotlib up front."""

    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name != "keep._mpl":
            return None
        import importlib.util
        return importlib.util.spec_from_loader(name, cls)

    @staticmethod
    def create_module(spec):
        return None

    @staticmethod
    def exec_module(module):
        module.__dict__["__keep_show"] = _show_figures
        exec(compile(_MPL_BACKEND, "<keep._mpl>", "exec"), module.__dict__)


# ---------------------------------------------------------------------------- the keep module

def _plain(x):
    """A JSON scalar for x (numpy scalars, pandas NA, timestamps become numbers/text)."""
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    item = getattr(x, "item", None)
    if callable(item):
        try:
            v = item()
            if v is None or isinstance(v, (bool, int, float, str)):
                return v
        except Exception:
            pass
    try:
        if x != x:  # NaN-like (pandas NA, NaT)
            return None
    except Exception:
        pass
    return str(x)


def _release_form(value):
    """The plain-JSON form the Keep checks and renders (keep/shared/policy.py check_value)."""
    if isinstance(value, bool) or isinstance(value, (int, float)):
        return {"type": "number", "value": value}
    if isinstance(value, str):
        return {"type": "text", "value": value}
    cls = type(value)
    mod = cls.__module__.split(".")[0]
    name = cls.__name__
    if mod == "numpy" and getattr(value, "ndim", None) == 0:
        v = _plain(value)
        return {"type": "text" if isinstance(v, str) else "number", "value": v}
    if mod == "pandas" and name == "DataFrame":
        return {"type": "table", "columns": [str(c) for c in value.columns],
                "index": [_plain(i) for i in value.index.tolist()],
                "rows": [[_plain(x) for x in row] for row in value.itertuples(index=False)]}
    if mod == "pandas" and name == "Series":
        return {"type": "table", "columns": [str(value.name if value.name is not None else "value")],
                "index": [_plain(i) for i in value.index.tolist()],
                "rows": [[_plain(x)] for x in value.tolist()]}
    if mod == "numpy" and name == "ndarray":
        if value.ndim == 1:
            return {"type": "list", "value": [_plain(x) for x in value.tolist()]}
        if value.ndim == 2:
            return {"type": "table", "columns": [str(j) for j in range(value.shape[1])],
                    "index": list(range(value.shape[0])),
                    "rows": [[_plain(x) for x in r] for r in value.tolist()]}
    if isinstance(value, (list, tuple)):
        return {"type": "list", "value": [_plain(x) for x in value]}
    if isinstance(value, dict):
        return {"type": "mapping", "value": {str(k): _plain(v) for k, v in value.items()}}
    mpl_figure = sys.modules.get("matplotlib.figure")
    if mpl_figure is not None and isinstance(value, mpl_figure.Figure):
        return {"type": "figure", "png": _figure_png(value)}
    return {"type": f"{mod}.{name}"}


def release(value, note=None):
    """Ask the Keep to release ``value`` to the notebook, with a note saying why.

    The Keep (not this interpreter) checks it against the data owner's output policy — type,
    size, byte budgets — and either shows it or shows "withheld by policy: <rule>"; under
    ``[release] mode = "review"`` it waits for the data owner's approval and returns at once.
    In the production profile this is the only way out besides keep.dp and keep.query."""
    if note is not None and not isinstance(note, str):
        raise TypeError("keep.release(): note must be text")
    _flush_streams()
    _send({"op": "release", "note": note or "", "value": _release_form(value)})
    return None


# ---------------------------------------------------------------------------- trusted queries
# keep.dp.* and keep.query only *describe* a query (keep/shared/queries.py) and send it through
# the door; the Keep's trusted side — its own process, not this interpreter — evaluates it on the
# sealed dataset and releases the answer itself.  What comes back here is the same answer.

def _ask(query):
    _flush_streams()
    raw = _host.call(json.dumps({"op": "query", "query": query}, separators=(",", ":"),
                                allow_nan=False).encode("utf-8"))
    try:
        answer = json.loads(raw)
    except ValueError:
        _obey(raw)
        raise RuntimeError("the Keep answered no query")
    signal = answer.get("signal")
    if signal:
        _obey(signal.encode())
    if not answer.get("ok"):
        raise PermissionError(answer.get("reason") or "refused by the Keep")
    return answer.get("value")


def _bounds(bounds):
    return None if bounds is None else [float(b) for b in bounds]


def _dp(fn, dataset, column=None, *, epsilon, bounds=None, **extra):
    query = {"kind": "dp", "fn": fn, "dataset": dataset, "epsilon": epsilon}
    if column is not None:
        query["column"] = column
    if bounds is not None:
        query["bounds"] = _bounds(bounds)
    query.update({k: v for k, v in extra.items() if v is not None})
    return _ask(query)


class _DP:
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
        return _dp("mean", dataset, column, epsilon=epsilon, bounds=bounds)

    @staticmethod
    def variance(dataset, column, *, bounds, epsilon):
        return _dp("variance", dataset, column, epsilon=epsilon, bounds=bounds)

    @staticmethod
    def histogram(dataset, column, *, epsilon, categories=None, bins=None):
        """Counts per category (the rest as '(other)'), or per bin between numeric edges."""
        return _dp("histogram", dataset, column, epsilon=epsilon,
                   categories=list(categories) if categories is not None else None,
                   bins=[float(b) for b in bins] if bins is not None else None)

    @staticmethod
    def quantile(dataset, column, q=0.5, *, bounds, epsilon, candidates=100):
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


def _make_keep_module():
    mod = types.ModuleType("keep", "keepbook helpers inside the Keep: display(), release(), "
                           "dp.*, query().")
    mod.__path__ = []
    mod.display = display
    mod.release = release
    mod.dp = _DP()
    mod.query = query
    mod.show_figures = _show_figures
    sys.modules["keep"] = mod
    return mod


def _input(prompt=""):
    raise RuntimeError("input() is not available in the Keep: cells cannot read from the "
                       "notebook's stdin; put the value in the cell or read it from /data")


class _Quitter:
    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return f"Use {self.name}() to end this Python session in the Keep"

    def __call__(self, code=None):
        raise KeepExit(code)


def _sleep_politely(real_sleep):
    def sleep(seconds):
        end = time.monotonic() + seconds
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return
            real_sleep(min(left, 0.05))
            _poll()
    sleep.__doc__ = real_sleep.__doc__
    return sleep


def install():
    ns = sys.modules["__main__"].__dict__
    _STATE["ns"] = ns
    sys.stdout = _Stream("stdout")
    sys.stderr = _Stream("stderr")
    builtins.display = display
    builtins.input = _input
    builtins.exit = _Quitter("exit")
    builtins.quit = _Quitter("quit")
    time.sleep = _sleep_politely(time.sleep)
    os.environ["MPLBACKEND"] = "module://keep._mpl"
    sys.meta_path.append(_BackendFinder)
    _make_keep_module()
    ns.setdefault("__builtins__", builtins)
    for name in ("ast", "base64", "io", "json", "linecache", "traceback", "types"):
        ns.pop(name, None)


# ---------------------------------------------------------------------------- running a cell

def _error(exc, skip_driver=True):
    tb = exc.__traceback__
    while skip_driver and tb is not None and tb.tb_frame.f_code.co_filename == _DRIVER_FILE:
        tb = tb.tb_next
    te = traceback.TracebackException(type(exc), exc, tb)
    te.stack = traceback.StackSummary.from_list(
        [f for f in te.stack if f.filename != _DRIVER_FILE])
    lines = list(te.format())
    return {"op": "error", "ename": type(exc).__name__, "evalue": str(exc),
            "traceback": [line.rstrip("\n") for line in lines]}


def run_cell(code):
    """Run one cell in __main__; report its result, figures and exception through the door."""
    _STATE["cell"] += 1
    _STATE["quiet"] = False
    _STATE["last_flush"] = time.monotonic()
    ns = _STATE["ns"]
    filename = f"<cell {_STATE['cell']}>"
    linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
    try:
        try:
            tree = ast.parse(code, filename, "exec")
            last = None
            if tree.body and isinstance(tree.body[-1], ast.Expr):
                last = ast.Expression(tree.body.pop().value)
            exec(compile(tree, filename, "exec"), ns)
            value = None
            if last is not None:
                value = eval(compile(last, filename, "eval"), ns)
            _flush_streams()
            if value is not None:
                ns["_"] = value
                data, meta = _bundle(value)
                _send({"op": "result", "data": data, "metadata": meta})
            _show_figures()
        except (KeepExit, SystemExit) as e:
            _flush_streams()
            if isinstance(e, KeepExit):
                code = e.args[0] if e.args else None
                _send({"op": "exit", "code": code if isinstance(code, (int, str)) else None})
            else:
                _send(_error(e))
        except BaseException as e:
            try:
                _flush_streams()
            except BaseException:
                pass
            _STATE["quiet"] = False
            plt = sys.modules.get("matplotlib.pyplot")
            if plt is not None:
                try:
                    plt.close("all")
                except Exception:
                    pass
            _send(_error(e))
    finally:
        _STATE["quiet"] = False


# ---------------------------------------------------------------------------- completion

def _resolve(dotted):
    ns = _STATE["ns"]
    parts = dotted.split(".")
    if parts[0] in ns:
        obj = ns[parts[0]]
    elif hasattr(builtins, parts[0]):
        obj = getattr(builtins, parts[0])
    else:
        raise LookupError(dotted)
    for p in parts[1:]:
        obj = getattr(obj, p)
    return obj


def _token(code, pos):
    start = pos
    while start > 0 and (code[start - 1].isalnum() or code[start - 1] in "_."):
        start -= 1
    return start


def complete(code, pos):
    import keyword
    start = _token(code, pos)
    token = code[start:pos]
    matches = []
    try:
        if "." in token:
            base, _, prefix = token.rpartition(".")
            obj = _resolve(base)
            names = dir(obj)
            matches = [f"{base}.{n}" for n in names if n.startswith(prefix)
                       and (prefix.startswith("_") or not n.startswith("_"))]
        else:
            names = set(_STATE["ns"]) | set(dir(builtins)) | set(keyword.kwlist)
            matches = sorted(n for n in names if n.startswith(token)
                             and (token.startswith("_") or not n.startswith("_")))
    except Exception:
        matches = []
    _send({"op": "reply", "content": {"status": "ok", "matches": sorted(set(matches)),
                                      "cursor_start": start, "cursor_end": pos,
                                      "metadata": {}}})


def inspect_at(code, pos, detail=0):
    import inspect as _inspect
    start = _token(code, pos)
    end = pos
    while end < len(code) and (code[end].isalnum() or code[end] == "_"):
        end += 1
    name = code[start:end].strip(".")
    if not name and start > 0 and code[start - 1] == "(":  # cursor just after "f("
        start2 = _token(code, start - 1)
        name = code[start2:start - 1]
    found, text = False, ""
    if name:
        try:
            obj = _resolve(name)
            found = True
            parts = [f"Type:      {type(obj).__name__}"]
            try:
                parts.append(f"Signature: {name}{_inspect.signature(obj)}")
            except (TypeError, ValueError):
                pass
            r = repr(obj)
            if len(r) > 300:
                r = r[:300] + "…"
            parts.append(f"String form: {r}")
            doc = _inspect.getdoc(obj)
            if doc:
                parts.append("Docstring:\n" + doc)
            text = "\n".join(parts)
        except Exception:
            found = False
    content = {"status": "ok", "found": found, "metadata": {},
               "data": {"text/plain": text} if found else {}}
    _send({"op": "reply", "content": content})
