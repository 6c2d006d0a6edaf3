"""The in-guest half of keepbook's Python session.  NOT imported on the host.

Staged into the Keep (``keep/inside/guest_site.py``) as package ``_keep_guest`` and
imported in each fresh CPython-in-Wasm session by the first turn, which calls :func:`install`.
It sets up, before the user's first cell:

* the door (``door.py``): stdout/stderr and every output leave through ``_host.call`` as JSON
  frames while the cell runs; the door's answer carries interrupts and deadlines;
* the session's IPython shell (``shell.py``): cells run through ``InteractiveShell.run_cell``, so
  magics, ``obj?``, ``display()``, the pretty printer and ``get_ipython()`` are IPython's own;
* numpy's integer defaults of a 64-bit machine (``wide_ints.py``), so integer results agree with
  ipykernel's;
* matplotlib's inline backend (``matplotlib_inline``, as in ipykernel): figures are PNGs;
* the ``keep`` module (``keep.display``, ``keep.release`` — the Keep's policy engine, outside
  this interpreter, decides what leaves; ``keep.dp.*`` and ``keep.query`` — questions the Keep's
  trusted side answers, ``trusted.py``);
* ``input()`` raises a clear error; ``time.sleep`` listens for interrupts; ``exit()`` ends the
  session (the Keep announces it).
"""

import builtins
import os
import sys
import time
import types

from . import door
from .door import flush_streams as _flush_streams
from .door import send as _send
from .trusted import DP as _DP
from .trusted import query as _query

_STATE = {"shell": None}


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
    ``[release] mode = "review"`` it is queued for the data owner's approval (this call returns
    at once; the notebook shows it as pending).  In the production profile this is the only way
    out besides keep.dp and keep.query."""
    if note is not None and not isinstance(note, str):
        raise TypeError("keep.release(): note must be text")
    _flush_streams()
    _send({"op": "release", "note": note or "", "value": _release_form(value)})
    return None


def _figure_png(fig):
    import base64
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _show_figures():
    """Display every open matplotlib figure now and close it (``keep.show_figures()``)."""
    if "matplotlib.pyplot" not in sys.modules:
        return
    from matplotlib_inline.backend_inline import show

    show(close=True)


def _display(*objs, **kwargs):
    from IPython.display import display

    return display(*objs, **kwargs)


def _make_keep_module():
    mod = types.ModuleType("keep", "keepbook helpers inside the Keep: display(), release(), "
                           "dp.*, query().")
    mod.__path__ = []
    mod.display = _display
    mod.release = release
    mod.dp = _DP()
    mod.query = _query
    mod.show_figures = _show_figures
    sys.modules["keep"] = mod
    return mod


def _input(prompt=""):
    raise RuntimeError("input() is not available in the Keep: cells cannot read from the "
                       "notebook's stdin; put the value in the cell or read it from /data")


def _sleep_politely(real_sleep):
    def sleep(seconds):
        end = time.monotonic() + seconds
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return
            real_sleep(min(left, 0.05))
            door.poll()
    sleep.__doc__ = real_sleep.__doc__
    return sleep


_SITE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the staged site folder


def _package_data(datasets):
    """scikit-learn's sample images, staged beside this package (keep/shared/guest_data.py):
    ``sklearn.datasets.images`` is found through the package's ``__path__``."""
    staged = os.path.join(_SITE, "sklearn", "datasets")
    if os.path.isdir(os.path.join(staged, "images")):
        datasets.__path__.append(staged)
    else:
        sys.meta_path.insert(0, _MissingImages)


class _MissingImages:
    """Says why ``sklearn.datasets.images`` is missing, instead of a bare import error."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        if name == "sklearn.datasets.images":
            raise ModuleNotFoundError(
                "scikit-learn's sample images are not in this Keep's Python image: run "
                "`keepbook warm` once where PyPI can be reached, then start a new Keep",
                name=name)
        return None


def install():
    """Set up the session before the user's first cell (see the module docstring)."""
    sys.stdout = door.Stream("stdout")
    sys.stderr = door.Stream("stderr")
    os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    os.environ.setdefault("IPYTHONDIR", "/tmp/.ipython")
    time.sleep = _sleep_politely(time.sleep)
    _make_keep_module()
    from . import after_import, wide_ints
    from .shell import make_shell

    wide_ints.install()
    after_import.register("sklearn.datasets", _package_data)
    shell = make_shell()
    wide_ints.attach(shell)
    builtins.input = _input
    if os.path.isdir("/data"):  # uploads are here: the notebook's relative paths work
        os.chdir("/data")
    _STATE["shell"] = shell


# ---------------------------------------------------------------------------- running a cell

def run_cell(code):
    """Run one cell through the shell; outputs and errors leave through the door as it runs."""
    from .shell import KeepExit

    door.STATE["quiet"] = False
    door.STATE["errored"] = False
    door.STATE["last_flush"] = time.monotonic()
    shell = _STATE["shell"]
    try:
        result = shell.run_cell(code, store_history=True, silent=False)
        failure = result.error_before_exec or result.error_in_exec
        if failure is not None and not door.STATE["errored"] \
                and not isinstance(failure, KeepExit):
            # IPython could not format it (e.g. out of memory) and only printed a fallback:
            # the cell still failed, and says so
            _flush_streams()
            door.send_error(type(failure).__name__, str(failure),
                            [f"{type(failure).__name__}: {failure}"])
    except KeepExit as e:  # exit() outside the user's code (e.g. a post-execute hook)
        code = e.args[0] if e.args else None
        _send({"op": "exit", "code": code if isinstance(code, (int, str)) else None})
    except BaseException as e:  # an interrupt that arrived in IPython's own machinery
        try:
            _flush_streams()
        except BaseException:
            pass
        door.STATE["quiet"] = False
        door.send_error(type(e).__name__, str(e), [f"{type(e).__name__}: {e}"])
    finally:
        try:
            _flush_streams()
        finally:
            door.STATE["quiet"] = False


# ---------------------------------------------------------------------------- completion

def complete(code, pos):
    """ipykernel's do_complete: IPython's completer on the cursor's line (no jedi)."""
    from IPython.utils.tokenutil import line_at_cursor

    line, offset = line_at_cursor(code, pos)
    try:
        txt, matches = _STATE["shell"].complete("", line, pos - offset)
    except Exception:
        txt, matches = "", []
    _send({"op": "reply", "content": {"status": "ok", "matches": list(matches),
                                      "cursor_start": pos - len(txt), "cursor_end": pos,
                                      "metadata": {}}})


def inspect_at(code, pos, detail=0):
    """ipykernel's do_inspect: IPython's inspector on the name at the cursor."""
    from IPython.utils.tokenutil import token_at_cursor
    from .shell import _bundle

    content = {"status": "ok", "found": False, "data": {}, "metadata": {}}
    try:
        bundle = _STATE["shell"].object_inspect_mime(token_at_cursor(code, pos),
                                                     detail_level=detail)
        bundle.pop("text/html", None)  # as ipykernel without an HTML pager
        content.update(found=True, data=_bundle(bundle))
    except Exception:
        pass
    _send({"op": "reply", "content": content})
