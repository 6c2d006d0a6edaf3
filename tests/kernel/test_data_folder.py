"""The notebook's own data folder and the Keep: a file next to the notebook but not in the Keep
gets a one-line hint (from what the kernel sees: in production only the cell's text), and
``%upload DIR`` takes a whole folder so the notebook's relative paths work unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest

from keepbook.keep.shared.dataset_format import DatasetError, check_name
from keepbook.kernel.data_folder import folder_files, hint
from tests.kernel.kernel_client import Kernel, ok, plain

NOT_FOUND = {"ename": "FileNotFoundError",
             "evalue": "[Errno 44] No such file or directory: 'data/sales.csv'"}


@pytest.fixture()
def notebook_dir(tmp_path: Path) -> Path:
    (tmp_path / "data" / "2024").mkdir(parents=True)
    (tmp_path / "data" / "sales.csv").write_text("region,total\nnorth,2147483647\nsouth,5\n")
    (tmp_path / "data" / "2024" / "q1.csv").write_text("x\n1\n")
    (tmp_path / "data" / ".ipynb_checkpoints").mkdir()
    (tmp_path / "data" / ".ipynb_checkpoints" / "old.csv").write_text("stale")
    (tmp_path / "notes.txt").write_text("hello")
    return tmp_path


def test_hint_names_the_upload_that_makes_the_path_work(notebook_dir):
    said = hint(NOT_FOUND, "pd.read_csv('data/sales.csv')", notebook_dir)
    assert "data/sales.csv is on your machine, not in the Keep" in said
    assert "`%upload data` takes the whole folder" in said
    redacted = {"ename": "FileNotFoundError", "evalue": "error id 3f — details withheld by policy"}
    said = hint(redacted, "open('notes.txt').read()", notebook_dir)  # from the cell's text only
    assert "`%upload notes.txt`" in said
    assert hint(NOT_FOUND, "x", notebook_dir / "data" / "2024") is None  # not on this machine
    assert hint({"ename": "KeyError", "evalue": "'data/sales.csv'"}, "", notebook_dir) is None


def test_folder_upload_keeps_relative_paths_and_skips_hidden_files(notebook_dir, tmp_path_factory):
    names = [n for _, n in folder_files(notebook_dir / "data")]
    assert names == ["data/sales.csv", "data/2024/q1.csv"]
    assert check_name("data/2024/q1.csv")
    for bad in ("../etc/passwd", "/abs", "data//x", "data/.hidden"):
        with pytest.raises(DatasetError):
            check_name(bad)
    odd = tmp_path_factory.mktemp("odd")
    (odd / "my file.csv").write_text("1")
    with pytest.raises(DatasetError, match="my file.csv.*nothing was sent"):
        folder_files(odd)


@pytest.mark.slow
@pytest.mark.parametrize("profile", ["staging", "production"])
def test_upload_dir_then_the_notebooks_paths_work(notebook_dir, profile):
    k = Kernel(cwd=str(notebook_dir))
    try:
        ok(k.execute(f"%keep new --backend nil --profile {profile}"))
        res = k.execute("import pandas as pd\npd.read_csv('data/sales.csv')")
        assert res.status == "error" and res.errors()[0]["ename"] == "FileNotFoundError"
        assert "data/sales.csv is on your machine, not in the Keep" in res.stream("stderr")
        if profile == "production":
            assert "sales.csv" not in res.errors()[0]["evalue"]  # the Keep redacted it
        up = ok(k.execute("%upload data"))
        assert "Sealed 2 files" in up.stream("stdout") and "/data/data/" in up.stream("stdout")
        code = ("import keep\ndf = pd.read_csv('data/sales.csv')\n"
                "keep.release(int(df.total.sum()), note='total')\n"
                "keep.release(open('data/2024/q1.csv').read(), note='file')")
        res = ok(k.execute(code))
        shown = " ".join(d["data"].get("text/plain", "") for d in res.of_type("display_data"))
        assert "2147483652" in shown and "x\n1" in shown.replace("\\n", "\n")
        if profile == "staging":
            assert plain(ok(k.execute("import os; os.getcwd()"))) == "'/data'"
    finally:
        k.close()
