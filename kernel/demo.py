"""`keepbook demo`: run the attestation walkthrough headless with nbclient and print what a user
would see — the trust vector and each cell's output — then save the executed notebook."""

from __future__ import annotations

import sys
from pathlib import Path

DEFAULT_NOTEBOOK = "attestation-walkthrough.ipynb"


def find_notebook(name: str | None) -> Path:
    if name:
        p = Path(name)
        if p.is_file():
            return p
        raise SystemExit(f"keepbook demo: notebook {name} not found")
    for base in (Path.cwd() / "notebooks", Path(__file__).resolve().parents[1] / "notebooks"):
        if (base / DEFAULT_NOTEBOOK).is_file():
            return base / DEFAULT_NOTEBOOK
    raise SystemExit("keepbook demo: notebooks/attestation-walkthrough.ipynb not found; run it from "
                     "the keepbook source tree or pass --notebook PATH")


def _text_of(output: dict) -> str:
    kind = output.get("output_type")
    if kind == "stream":
        return output.get("text", "")
    if kind in ("display_data", "execute_result"):
        data = output.get("data", {})
        if "text/plain" in data:
            return data["text/plain"] + "\n"
        return f"[{', '.join(data)}]\n"
    if kind == "error":
        return f"{output.get('ename')}: {output.get('evalue')}\n"
    return ""


def run_demo(notebook: str | None, output: str, timeout: int) -> int:
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    from keepbook.kernel.kernelspec import KERNEL_NAME

    path = find_notebook(notebook)
    nb = nbformat.read(path, as_version=4)
    print(f"keepbook demo: executing {path} with the {KERNEL_NAME} kernel (headless)\n")
    client = NotebookClient(nb, kernel_name=KERNEL_NAME, timeout=timeout,
                            resources={"metadata": {"path": str(path.parent)}})
    status = 0
    try:
        client.execute()
    except CellExecutionError as exc:
        print(f"keepbook demo: a cell failed:\n{exc}", file=sys.stderr)
        status = 1
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        print(f"── In [{cell.get('execution_count') or ' '}] " + "─" * 50)
        print(cell.source.strip())
        text = "".join(_text_of(o) for o in cell.get("outputs", []))
        if text.strip():
            print("── Out " + "─" * 55)
            print(text.rstrip())
        print()
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, out)
    print(f"keepbook demo: executed notebook written to {out}")
    return status
