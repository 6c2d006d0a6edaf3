"""The same numbers as ipykernel: integer-heavy numpy and pandas cells run in a local ipykernel
and in keepbook (a Keep's wasm32 Python, whose numpy has a 32-bit default integer), and every
result must be the same text.  See keep/inside/guest/wide_ints.py for what makes them agree."""

from __future__ import annotations

import re

import pytest

from tests.kernel.kernel_client import Kernel

pytestmark = pytest.mark.slow

np = pytest.importorskip("numpy", reason="the ipykernel side needs numpy (pip install -e '.[test]')")
pd = pytest.importorskip("pandas", reason="the ipykernel side needs pandas (pip install -e '.[test]')")

#: One cell each; the last expression's value (or the error) is compared.
CELLS = [
    # the three lines
    "np.arange(100000).sum()",
    "(np.arange(70000)**2).sum()",
    "int(np.prod(np.arange(1, 20)))",
    # reductions and accumulations
    "np.arange(1, 20).prod()",
    "np.sum(np.arange(100000))",
    "np.sum([2**31 - 1, 1])",
    "np.arange(100000).cumsum()[-1]",
    "np.cumsum(np.arange(100000))[-1]",
    "np.add.reduce(np.arange(100000, dtype=np.int32))",
    "np.multiply.reduce(np.arange(1, 25))",
    "np.array([True] * 5).sum()",
    "np.arange(10, dtype=np.int32).sum().dtype",
    "np.arange(10, dtype=np.int32).cumsum().dtype",
    "np.trace(np.full((3, 3), 2**30))",
    "np.mean(np.arange(100000))",
    "sum(np.arange(100000))",
    # what arrays are made of, and how they print
    "np.array([1, 2, 3])",
    "np.array([1, 2, 3]).dtype",
    "np.arange(5)",
    "np.arange(10, dtype=np.int32)",
    "np.zeros(3, dtype=int)",
    "np.ones((2, 2), int).dtype",
    "np.full(3, 7)",
    "np.array([3_000_000_000, 1]) * 2",
    "np.array([50000, 60000]) ** 2",
    "(np.arange(100000) * 100000).max()",
    "np.array([1.5, 2.5]).astype(int)",
    "np.linspace(0, 10, 5, dtype=int)",
    "np.indices((2, 2)).dtype",
    "np.dtype(int)",
    "np.iinfo(int).max",
    "np.int_",
    "np.arange(9).reshape(3, 3) @ np.arange(9).reshape(3, 3)",
    # seeded random numbers (the legacy generator picks its algorithm by the integer type)
    "np.random.seed(0)\nnp.random.randint(0, 100, 5)",
    "np.random.seed(0)\nnp.random.randint(0, 2**40, 3)",
    "np.random.seed(1)\nnp.random.choice(10, 3)",
    "np.random.seed(2)\nnp.random.permutation(6)",
    "np.random.RandomState(3).randint(0, 10**6, 4)",
    "np.random.default_rng(0).integers(0, 10**12, 3)",
    # indices and counts
    "np.argsort(np.array([3, 1, 2]))",
    "np.array([3, 1, 2]).argmax()",
    "np.bincount(np.array([1, 1, 3]))",
    "np.unique(np.array([3, 3, 1]), return_counts=True)",
    "np.nonzero(np.array([0, 5, 0, 7]))",
    "len(np.arange(7))",
    # pandas
    "pd.Series([1, 2, 3]).sum()",
    "pd.Series(np.arange(100000)).sum()",
    "pd.Series(range(70000)).pow(2).sum()",
    "pd.DataFrame({'a': np.arange(5), 'b': list('abcde')}).dtypes",
    "pd.DataFrame({'a': [1, 2, 3]})['a'].astype(int).dtype",
    "pd.Series([1.0, 2.0]).astype('int').dtype",
    "pd.Series(np.arange(100000)).cumsum().iloc[-1]",
    "pd.Series([3, 1, 2, 3]).value_counts()",
    "pd.DataFrame({'k': ['x', 'y', 'x'], 'v': [2**31, 2**31, 5]}).groupby('k')['v'].sum()",
    "pd.DataFrame({'v': np.arange(100000)}).describe().loc['mean', 'v']",
    "pd.Series(np.arange(10)).values.dtype",
    "import io\npd.read_csv(io.StringIO('a,b\\n1,2\\n3,4'), dtype={'a': int}).dtypes",
    "pd.Series(np.array([1, 2])).dtype",
    "pd.DataFrame(np.arange(12).reshape(3, 4)).sum()",
]


def _result(res) -> str:
    for o in res.outputs:
        if o["msg_type"] == "execute_result":
            return o["content"]["data"]["text/plain"]
    errors = res.errors()
    if errors:
        return f"{errors[0]['ename']}: {errors[0]['evalue']}"
    return "<no result>"


@pytest.fixture(scope="module")
def kernels():
    reference = Kernel("python3")
    keep = Kernel()
    try:
        for k in (reference, keep):
            setup = k.execute("import numpy as np, pandas as pd")
            assert setup.status == "ok", setup.text()
        yield reference, keep
    finally:
        keep.close()
        reference.close()


def test_integer_results_are_ipykernels(kernels):
    reference, keep = kernels
    differ = []
    for code in CELLS:
        want, got = _result(reference.execute(code)), _result(keep.execute(code))
        if want != got:
            differ.append(f"{code!r}:\n  ipykernel: {want}\n  keepbook:  {got}")
    assert not differ, "\n".join(differ)


def test_a_pointer_sized_integer_is_warned_about_before_the_result(kernels):
    _reference, keep = kernels
    res = keep.execute("import sys\nnp.iinfo(np.intp).max, sys.maxsize")
    kinds = [o["msg_type"] for o in res.outputs]
    warning = next(i for i, o in enumerate(res.outputs) if o["msg_type"] == "stream"
                   and "32-bit machine" in o["content"]["text"])
    assert re.search(r"uses intp, maxsize", res.outputs[warning]["content"]["text"])
    assert warning < kinds.index("execute_result")  # said before the (32-bit) answer
