"""The notebook's own data files and the Keep: ``%upload DIR`` (a whole folder, so the
notebook's relative paths work unchanged in the Keep) and the one-line hint when a cell opens a
file that is next to the notebook on this machine but not in the Keep.

Both run on the user's machine, from what the kernel already has: the cell's own text and the
error the Keep let through.  In the ``production`` profile the Keep withholds an error's message;
the hint then looks only at the cell's text, so it tells nothing the Keep did not release.

In the Keep, uploads appear under ``/data`` (read-only) and the Python session's working folder
is ``/data``: ``%upload patients.csv`` makes ``open("patients.csv")`` work, ``%upload data``
makes ``pd.read_csv("data/x.csv")`` work.
"""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path

from keepbook.keep.shared.dataset_format import DatasetError, check_name

_NOT_FOUND = ("FileNotFoundError", "IsADirectoryError", "NotADirectoryError")
_QUOTED = re.compile(r"""(?:'([^'\n]{1,255})'|"([^"\n]{1,255})")""")


def folder_files(folder: Path, as_name: str | None = None) -> list[tuple[Path, str]]:
    """Every file under ``folder`` with its dataset name ``FOLDER/relative/path`` (hidden files
    and folders skipped, as Jupyter's own checkpoints are).  Names are checked first: one that
    the Keep cannot hold stops the upload before anything is sent."""
    top = as_name or folder.name
    out: list[tuple[Path, str]] = []
    bad: list[str] = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for f in sorted(files):
            if f.startswith("."):
                continue
            path = Path(root) / f
            name = "/".join([top, *path.relative_to(folder).parts])
            try:
                out.append((path, check_name(name)))
            except DatasetError:
                bad.append(name)
    if bad:
        raise DatasetError(f"%upload {folder}: these names cannot be datasets in the Keep (use "
                           f"letters, digits, '.', '_' or '-', starting with a letter or digit): "
                           f"{', '.join(bad[:5])}{' …' if len(bad) > 5 else ''}; nothing was sent")
    if not out:
        raise DatasetError(f"%upload {folder}: the folder has no files; nothing was sent")
    return out


def _candidates(error: dict, code: str) -> list[str]:
    """Paths the failing cell may have opened: the one in the error, else its string literals."""
    found: list[str] = []
    m = _QUOTED.search(str(error.get("evalue", "")))
    if m:
        found.append(m.group(1) or m.group(2))
    try:
        found += [n.value for n in ast.walk(ast.parse(code)) if isinstance(n, ast.Constant)
                  and isinstance(n.value, str) and 0 < len(n.value) <= 255 and "\n" not in n.value]
    except SyntaxError:  # IPython syntax (%magic, !cmd): quoted text will do
        found += [a or b for a, b in _QUOTED.findall(code)]
    return found


def _says(text: str, local: Path) -> str:
    where = f"[keepbook] {text} is on your machine, not in the Keep — "
    parts = Path(text).parts
    if local.is_dir():
        return (f"[keepbook] {text} is a folder on your machine, not in the Keep — `%upload "
                f"{text}` seals it to the Keep, so the notebook's paths under it work unchanged.")
    if Path(text).is_absolute():
        return where + f"`%upload {text}` seals it to the Keep, where it is /data/{local.name}."
    if len(parts) == 1:
        return where + f"`%upload {text}` seals it to the Keep, and this path then works unchanged."
    return where + (f"`%upload {text} --as {text}` seals it to the Keep; `%upload {parts[0]}` "
                    f"takes the whole folder, so the notebook's relative paths ({text}) then "
                    f"work unchanged.")


def hint(error: dict, code: str, here: Path) -> str | None:
    """The hint for a cell that failed opening a file that is on this machine, not in the Keep."""
    if str(error.get("ename")) not in _NOT_FOUND:
        return None
    for text in _candidates(error, code):
        if text.startswith(("/data/", "/tmp/")) or "://" in text:
            continue
        local = Path(text).expanduser()
        local = local if local.is_absolute() else here / local
        try:
            if local.exists():
                return _says(text, local)
        except OSError:
            continue
    return None
