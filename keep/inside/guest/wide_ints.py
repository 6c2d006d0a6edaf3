"""numpy's integer behaviour of a 64-bit machine inside the Keep.  NOT imported on the host.

Why: the Keep's Python is wasm32, a 32-bit machine, where numpy's default integer (``np.int_``,
``np.intp``, C ``long``) is 32-bit.  Integer sums overflowed silently where ipykernel, on a
64-bit machine, gives the right number (``np.arange(100000).sum()`` was 704982704, not
4999950000).  numpy's default integer is fixed in its compiled code, so it cannot be switched;
what can be done soundly is done here, before the user's first cell:

1. Accumulators, for every caller: an integer or boolean sum or product narrower than 64 bits
   accumulates in int64 (uint64 when unsigned) — numpy's own rule on a 64-bit machine ("smaller
   than the platform integer: the platform integer").  The Python functions behind
   ``ndarray.sum/prod`` (``numpy/_core/_methods.py``), ``np.sum/np.prod`` (``_wrapreduction``),
   ``np.cumsum/cumprod/cumulative_sum/cumulative_prod`` and ``np.trace`` are wrapped.
2. Integers the user's cell makes, and nothing else (libraries keep the index type their
   compiled parts expect): numpy's creation functions called from a cell turn Python integers
   into int64 arrays (``np.array([1, 2])``, ``np.arange(n)``, ``np.full(3, 7)``,
   ``np.random.randint``...), its index-returning functions give int64 (``np.argsort``,
   ``np.bincount``, ``np.unique(..., return_counts=True)``...), and the cell's own text is
   rewritten (an ``ast`` transformer, IPython's ``ast_transformers``) so that ``dtype=int``,
   ``.astype(int)``, ``np.int_``, ``np.dtype('int')`` mean int64, and ``a.cumsum()``,
   ``a.argmax()``, ``np.add.reduce(a)`` follow rules 1 and 2 as methods too.
3. What cannot be made to agree is said before the cell runs, never silently: a cell that uses
   ``np.intp``/``np.uintp`` or ``sys.maxsize`` (the machine's pointer size: 32-bit here) gets a
   one-line warning first.  Index arrays a library returns (``pd.factorize`` codes,
   ``Series.argsort()``) stay numpy's 32-bit index type: their values agree, their dtype prints
   as int32.
"""

import ast
import builtins
import sys
import warnings

from . import after_import

_CELL_FILES = ("<timed exec>", "<timed eval>", "<magic-timeit>")
_DEFAULT_INT_NAMES = {"int", "int_", "l", "long", "int0"}
_DEFAULT_UINT_NAMES = {"uint", "L", "ulong", "uint0"}
_ALIASES = {"int_": "int64", "long": "int64", "uint": "uint64", "ulong": "uint64"}
_POINTER_SIZED = {"intp", "uintp", "maxsize"}
_np = None  # numpy, once imported


def _from_cell(depth=2):
    """True when the Python frame ``depth`` levels up is the user's cell (or %time/%timeit);
    the cell helpers below (``__keep_method__``) are looked through."""
    try:
        frame = sys._getframe(depth)
    except ValueError:
        return False
    while frame is not None and frame.f_code in _TRANSPARENT:
        frame = frame.f_back
    if frame is None:
        return False
    name = frame.f_code.co_filename
    return name.startswith("<ipython-input-") or name in _CELL_FILES


# ---------------------------------------------------------------------------- 1. accumulators

def _wide(dtype):
    """The accumulator a 64-bit machine uses for this input dtype, or None to keep numpy's."""
    np = _np
    if dtype.kind == "b" or (dtype.kind == "i" and dtype.itemsize < 8):
        return np.dtype(np.int64)
    if dtype.kind == "u" and dtype.itemsize < 8:
        return np.dtype(np.uint64)
    return None


def _input_dtype(obj):
    """The dtype numpy will reduce over, for arrays and Python data only: other objects
    (pandas) have their own ``sum`` and choose their own accumulator."""
    if isinstance(obj, (_np.ndarray, _np.generic)):
        return obj.dtype
    if isinstance(obj, (list, tuple, int, bool)):
        return _ORIGINAL["asarray"](obj).dtype
    return None


def _accumulating(fn, dtype_pos):
    """Wrap ``fn(a, ..., dtype=None, ...)`` so that narrow integer input accumulates wide."""
    def wrapper(*args, **kwargs):
        __tracebackhide__ = True
        if (len(args) <= dtype_pos and kwargs.get("dtype") is None
                and kwargs.get("out") is None and args):
            d = _input_dtype(args[0])
            wide = _wide(d) if d is not None else None
            if wide is not None:
                kwargs["dtype"] = wide
        return fn(*args, **kwargs)
    wrapper.__wrapped__ = fn
    wrapper.__doc__ = fn.__doc__
    wrapper.__name__ = getattr(fn, "__name__", "wrapper")
    return wrapper


def _wrapreduction(fn):
    def wrapper(obj, ufunc, method, axis, dtype, out, **kwargs):
        __tracebackhide__ = True
        if dtype is None and out is None and ufunc in (_np.add, _np.multiply):
            d = _input_dtype(obj)
            wide = _wide(d) if d is not None else None
            if wide is not None:
                dtype = wide
        return fn(obj, ufunc, method, axis, dtype, out, **kwargs)
    wrapper.__wrapped__ = fn
    return wrapper


# ---------------------------------------------------------------------------- 2. cell integers

_ORIGINAL = {}


def _numpy_int32_inside(obj):
    """Whether ``obj`` itself carries a numpy dtype (then numpy's choice stands), looking at
    the first element of nested lists only (cheap; a list mixing kinds is rare)."""
    for _ in range(32):
        if isinstance(obj, (_np.ndarray, _np.generic)) or hasattr(obj, "__array__") \
                or hasattr(obj, "__array_interface__"):
            return True
        if isinstance(obj, (list, tuple)) and obj:
            obj = obj[0]
            continue
        return False
    return False


def _dtype_arg(value):
    """A dtype argument as a 64-bit machine reads it: the default integer is int64."""
    np = _np
    if np is None:
        return value
    if value is int or (isinstance(value, str) and value in _DEFAULT_INT_NAMES):
        return np.dtype(np.int64)
    if isinstance(value, str) and value in _DEFAULT_UINT_NAMES:
        return np.dtype(np.uint64)
    if isinstance(value, dict):
        return {k: _dtype_arg(v) for k, v in value.items()}
    return value


def _creating(name, fn):
    """np.array & co. called from a cell: Python integers become int64, as on a 64-bit machine."""
    def wrapper(*args, **kwargs):
        __tracebackhide__ = True
        if not _from_cell():
            return fn(*args, **kwargs)
        args = tuple(_dtype_arg(a) if a is int else a for a in args)
        if "dtype" in kwargs:
            kwargs["dtype"] = _dtype_arg(kwargs["dtype"])
        explicit = kwargs.get("dtype") is not None or (name in _DTYPE_POS and
                                                        len(args) > _DTYPE_POS[name])
        if not explicit:
            if name == "arange" and args and all(type(a) in (int, bool) for a in args):
                kwargs["dtype"] = _np.int64
            elif name == "full" and len(args) >= 2 and type(args[1]) is int:
                kwargs["dtype"] = _np.int64
            elif name in ("randint", "indices"):
                kwargs["dtype"] = _np.int64
        result = fn(*args, **kwargs)
        if (not explicit and name in _FROM_OBJECT and isinstance(result, _np.ndarray)
                and result.dtype == _np.intp and args and not _numpy_int32_inside(args[0])):
            result = result.astype(_np.int64)
        if name in ("choice", "permutation") and args and type(args[0]) is int:
            result = _widen_index(result)
        return result
    wrapper.__wrapped__ = fn
    wrapper.__doc__ = fn.__doc__
    wrapper.__name__ = name
    return wrapper


#: where each creation function takes its dtype positionally (a positional dtype is explicit)
_DTYPE_POS = {"array": 1, "asarray": 1, "asanyarray": 1, "ascontiguousarray": 1,
              "asfortranarray": 1, "arange": 99, "full": 2, "indices": 1, "zeros": 1, "ones": 1,
              "empty": 1, "zeros_like": 1, "ones_like": 1, "empty_like": 1, "full_like": 2,
              "randint": 4, "choice": 99, "permutation": 99}
_FROM_OBJECT = ("array", "asarray", "asanyarray", "ascontiguousarray", "asfortranarray")


def _widen_index(value):
    """numpy's index type (32-bit here) as int64, inside tuples too."""
    np = _np
    if isinstance(value, np.ndarray) and value.dtype == np.intp:
        return value.astype(np.int64)
    if isinstance(value, np.generic) and value.dtype == np.intp:
        return np.int64(value)
    if isinstance(value, tuple):
        widened = [_widen_index(v) for v in value]
        return type(value)(*widened) if hasattr(value, "_fields") else tuple(widened)
    return value


#: index-returning functions: which parts of the result are indices (None = all)
_INDEXING = {"argmax": None, "argmin": None, "argsort": None, "nonzero": None,
             "argwhere": None, "flatnonzero": None, "searchsorted": None, "bincount": None,
             "count_nonzero": None, "digitize": None, "lexsort": None, "argpartition": None,
             "unravel_index": None, "tril_indices": None, "triu_indices": None,
             "diag_indices": None, "nanargmax": None, "nanargmin": None, "where": "one-arg",
             "unique": "after-first", "histogram": "first"}


def _indexing(name, fn):
    part = _INDEXING[name]

    def wrapper(*args, **kwargs):
        __tracebackhide__ = True
        result = fn(*args, **kwargs)
        if not _from_cell():
            return result
        if part is None:
            return _widen_index(result)
        if part == "one-arg":
            return _widen_index(result) if len(args) + len(kwargs) == 1 else result
        if not isinstance(result, tuple):
            return result
        if part == "first":
            return (_widen_index(result[0]),) + tuple(result[1:])
        return type(result)(result[0], *[_widen_index(v) for v in result[1:]]) \
            if hasattr(result, "_fields") else (result[0],) + tuple(
                _widen_index(v) for v in result[1:])
    wrapper.__wrapped__ = fn
    wrapper.__doc__ = fn.__doc__
    wrapper.__name__ = name
    return wrapper


def _patch_numpy(np):
    global _np
    _np = np
    from numpy._core import _methods, fromnumeric

    _ORIGINAL["asarray"] = np.asarray
    from numpy._core import arrayprint

    # arrays print their dtype unless it is the machine's default: int64 is, as on 64-bit
    arrayprint._typelessdata[:] = [np.int64 if t is np.int_ else t
                                   for t in arrayprint._typelessdata]
    _methods._sum = _accumulating(_methods._sum, 2)
    _methods._prod = _accumulating(_methods._prod, 2)
    fromnumeric._wrapreduction = _wrapreduction(fromnumeric._wrapreduction)
    for name in ("cumsum", "cumprod", "cumulative_sum", "cumulative_prod", "trace"):
        fn = getattr(np, name, None)
        if fn is not None:
            wide = _accumulating(fn, 99 if name.startswith("cumulative") else
                                 (4 if name == "trace" else 2))
            setattr(np, name, wide)
            if getattr(fromnumeric, name, None) is fn:
                setattr(fromnumeric, name, wide)
    for name in _DTYPE_POS:
        if name in ("randint", "choice", "permutation"):
            continue
        setattr(np, name, _creating(name, getattr(np, name)))
    for name in _INDEXING:
        if hasattr(np, name):
            setattr(np, name, _indexing(name, getattr(np, name)))


def _patch_numpy_random(random):
    for name in ("randint", "choice", "permutation"):
        if hasattr(random, name):
            setattr(random, name, _creating(name, getattr(random, name)))


# ---------------------------------------------------------------------------- the cell's text

def _dtype_call(value):
    """``__keep_dtype__``: a dtype argument written in a cell, read as on a 64-bit machine."""
    __tracebackhide__ = True
    return _dtype_arg(value)


def _alias(obj, name):
    """``__keep_alias__``: ``np.int_``/``np.long``/``np.uint`` are 64-bit on a 64-bit machine."""
    __tracebackhide__ = True
    value = getattr(obj, name)
    if _np is not None and obj is _np:
        return getattr(_np, _ALIASES[name])
    return value


_ACCUMULATING_METHODS = {"cumsum": 1, "cumprod": 1, "trace": 2}
_INDEX_METHODS = {"argmax", "argmin", "argsort", "nonzero", "searchsorted", "argpartition"}


def _method(obj, name, *args, **kwargs):
    """``__keep_method__``: a method call in a cell, with rules 1 and 2 for numpy receivers."""
    __tracebackhide__ = True
    np = _np
    if name == "astype" and args:  # numpy, pandas & co: astype(int) means int64
        args = (_dtype_arg(args[0]),) + args[1:]
    if np is not None:
        if isinstance(obj, np.ndarray):
            if name in _ACCUMULATING_METHODS and kwargs.get("dtype") is None \
                    and kwargs.get("out") is None and len(args) <= _ACCUMULATING_METHODS[name]:
                wide = _wide(obj.dtype)
                if wide is not None:
                    kwargs["dtype"] = wide
            elif name in _INDEX_METHODS:
                return _widen_index(getattr(obj, name)(*args, **kwargs))
        elif isinstance(obj, np.ufunc) and obj in (np.add, np.multiply) \
                and name in ("reduce", "accumulate") and args \
                and kwargs.get("dtype") is None and kwargs.get("out") is None and len(args) < 3:
            d = _input_dtype(args[0])
            wide = _wide(d) if d is not None else None
            if wide is not None:
                kwargs["dtype"] = wide
        elif name == "randint" and isinstance(obj, np.random.RandomState) \
                and kwargs.get("dtype") is None and len(args) < 4:
            kwargs["dtype"] = np.int64
    return getattr(obj, name)(*args, **kwargs)


_TRANSPARENT = {_method.__code__}
_REWRITTEN_METHODS = set(_ACCUMULATING_METHODS) | _INDEX_METHODS | {
    "astype", "reduce", "accumulate", "randint"}


class CellRewriter(ast.NodeTransformer):
    """The cell's text as a 64-bit machine reads it (see the module docstring, 2.)."""

    def __init__(self):
        self.pointer_sized = set()

    def visit_Call(self, node):
        self.generic_visit(node)
        for kw in node.keywords:
            if kw.arg == "dtype":
                kw.value = _call("__keep_dtype__", [kw.value])
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr in ("dtype", "iinfo") and node.args:
            node.args[0] = _call("__keep_dtype__", [node.args[0]])
        if isinstance(func, ast.Attribute) and func.attr in _REWRITTEN_METHODS:
            return ast.copy_location(ast.Call(
                func=ast.Name("__keep_method__", ast.Load()),
                args=[func.value, ast.Constant(func.attr)] + node.args,
                keywords=node.keywords), node)
        return node

    def visit_Attribute(self, node):
        self.generic_visit(node)
        if node.attr in _POINTER_SIZED and isinstance(node.ctx, ast.Load):
            self.pointer_sized.add(node.attr)
        if node.attr in _ALIASES and isinstance(node.ctx, ast.Load):
            return ast.copy_location(_call("__keep_alias__", [node.value,
                                                              ast.Constant(node.attr)]), node)
        return node


def _call(name, args):
    return ast.Call(func=ast.Name(name, ast.Load()), args=args, keywords=[])


class _Transformer(ast.NodeTransformer):
    """The object IPython's ``ast_transformers`` calls for every cell (and %time, %timeit)."""

    def visit_Module(self, node):
        return self._rewrite(node)

    def visit_Expression(self, node):
        return self._rewrite(node)

    @staticmethod
    def _rewrite(node):
        rewriter = CellRewriter()
        node = ast.fix_missing_locations(rewriter.visit(node))
        if rewriter.pointer_sized:
            names = ", ".join(sorted(rewriter.pointer_sized))
            print(f"[keepbook] warning: this cell uses {names}: the Keep's Python is a 32-bit "
                  f"machine (wasm32), where the pointer-sized integer is 32-bit (64-bit in "
                  f"ipykernel); results that depend on it can differ from ipykernel's.",
                  file=sys.stderr)
        return node


def install():
    """Before the first cell: patch numpy when (and if) it is imported; the cell helpers."""
    after_import.register("numpy", _patch_numpy)
    after_import.register("numpy.random", _patch_numpy_random)
    builtins.__keep_dtype__ = _dtype_call
    builtins.__keep_alias__ = _alias
    builtins.__keep_method__ = _method
    if "numpy" in sys.modules:
        _patch_numpy(sys.modules["numpy"])


def attach(shell):
    """Rewrite every cell the shell runs (IPython's ``ast_transformers``)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        shell.ast_transformers.append(_Transformer())
