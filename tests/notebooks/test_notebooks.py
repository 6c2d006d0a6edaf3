"""Every notebook in notebooks/ runs top to bottom headless with nbclient, without errors."""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.fixture(scope="module", autouse=True)
def kernelspec():
    from keepbook.kernel.kernelspec import install
    install(prefix=sys.prefix)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs_clean(path: Path, tmp_path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name=nb.metadata.get("kernelspec", {}).get("name", "keepbook"),
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors, errors
    nbformat.write(nb, tmp_path / path.name)


def test_walkthrough_shows_verified_trust_vector_and_keep_output() -> None:
    nb = nbformat.read(ROOT / "notebooks" / "attestation-walkthrough.ipynb", as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="keepbook").execute()
    text = "\n".join(o.get("text", "") + o.get("data", {}).get("text/plain", "")
                     for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "RESULT: VERIFIED" in text and "SIMULATED" in text
    assert "Hello from inside the Keep!" in text
    assert "5050" in text


def test_sensitive_analysis_shows_the_three_ways_out_and_what_each_refuses() -> None:
    """Review: the pending release is updated in place with the approved value, the rejected
    one with the owner's reason; DP: answers labelled by the Keep (OpenDP), refusals named, the
    budget shown; threshold query: the 5-patient ward suppressed; the analyst's code cannot see
    the queries-only file."""
    nb = nbformat.read(ROOT / "notebooks" / "sensitive-analysis.ipynb", as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="keepbook",
                   resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()

    def texts(i: int) -> str:
        return "\n".join(o.get("text", "") + o.get("data", {}).get("text/plain", "")
                         for o in nb.cells[i].get("outputs", []))

    def cell(start: str) -> int:
        return next(i for i, c in enumerate(nb.cells) if c.cell_type == "code" and start in c.source)

    mean = texts(cell("keep.release(round(float(adults"))
    assert "waiting" not in mean and float(mean.strip()) > 100          # approved: the value
    table = texts(cell("by_ward = df.groupby"))
    assert "rejected by the data owner: the rare-disease unit" in table and "cardiology" not in table
    assert texts(cell("keep.release(int(os.path.exists")).strip().endswith("\n0")
    dp = texts(cell("n = keep.dp.count"))
    assert dp.count("computed in the Keep by OpenDP") == 3
    refused = texts(cell("for ask in"))
    for words in ("bounds are missing", "epsilon must be a number above 0", "privacy budget is spent"):
        assert words in refused
    assert "patients.csv: ε 0.3 of 1 left" in texts(cell("%keep status"))
    wards = texts(cell("wards = keep.query"))
    assert "cardiology" in wards and "rare-disease" not in wards
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors, errors


PARAMETERS = {"teaching-attestation.ipynb": {"backend": "sim-tdx", "attacks": "flip-evidence,replay"},
              "attestation-walkthrough.ipynb": {"backend": "sim-sgx", "profile": "production"},
              "sensitive-analysis.ipynb": {"backend": "sim-tdx"}}
#: what each parameterised run must show, proving the parameters took effect
EXPECT = {"attestation-walkthrough.ipynb": ["Trust vector (sgx)", "production"],
          "sensitive-analysis.ipynb": ["Trust vector (tdx)"],
          "teaching-attestation.ipynb": ["tdx",
                                         # the class section: first contact, accepted, remembered
                                         "SIMULATED root you have not accepted",
                                         "accepted with --trust-sim-root", "accepted before"]}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs_under_papermill_with_parameters(path: Path, tmp_path: Path) -> None:
    papermill = pytest.importorskip("papermill")
    params = PARAMETERS.get(path.name, {})
    out = tmp_path / path.name
    papermill.execute_notebook(str(path), str(out), parameters=params, cwd=str(path.parent),
                               progress_bar=False, kernel_name=None)
    nb = nbformat.read(out, as_version=4)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors, errors
    if params:
        injected = [c for c in nb.cells if "injected-parameters" in c.get("metadata", {}).get("tags", [])]
        assert injected and all(f"{k} = " in injected[0].source for k in params)
        text = "\n".join(o.get("text", "") + o.get("data", {}).get("text/plain", "")
                         for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
        for expected in EXPECT.get(path.name, []):
            assert expected in text, (path.name, expected)
