"""The tree shows the trust domains, and nothing crosses them.

Every module of the installed package belongs to exactly one domain, decided by its path:

* ``user``   — ``kernel/``, ``extensions/``: the user's machine (keys, plaintext, the verifier)
* ``host``   — ``keep/host/``: the untrusted host (keepmgr, keepldr, launchers)
* ``inside`` — ``keep/inside/``: inside the Keep (wasmldr, runtimes, policy gate, audit log)
* ``shared`` — ``keep/shared/``: the shared core (no secrets; wire formats, evidence checks)
* ``image``  — ``keep/image/``: the Keep image builder (reads the Keep's files, holds no secret)
* ``launcher`` — ``keepbook/``: the command line, which only dispatches to one domain per command
* ``bench``  — ``keepbook/bench/``: the benchmarks, which measure each domain's code in one
  process on purpose (never part of a user's session)

A domain may import itself and the shared core; the shared core imports only itself.  Imports
are found by reading every source file (``import``/``from`` statements, anywhere in the file,
and ``importlib.import_module``/``__import__`` calls with a literal name), so a lazy import inside
a function counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: folder (relative to the repository) → (package it installs as, domain)
FOLDERS = {
    "kernel": ("keepbook.kernel", "user"),
    "extensions": ("keepbook.extensions", "user"),
    "keep/host": ("keepbook.keep.host", "host"),
    "keep/inside": ("keepbook.keep.inside", "inside"),
    "keep/shared": ("keepbook.keep.shared", "shared"),
    "keep/image": ("keepbook.keep.image", "image"),
    "keepbook": ("keepbook", "launcher"),
    "keepbook/bench": ("keepbook.bench", "bench"),
}
ALLOWED = {
    "user": {"user", "shared"},
    "host": {"host", "shared"},
    "inside": {"inside", "shared"},
    "shared": {"shared"},
    "image": {"image", "shared"},
    # The command line dispatches each sub-command to the one domain it runs in (each command is
    # a process of its own); it holds no logic of any domain.
    "launcher": {"launcher", "user", "host", "inside", "shared", "image", "bench"},
    "bench": {"bench", "user", "host", "inside", "shared", "image"},
}


def domain_of_module(name: str) -> str | None:
    """The domain of an imported ``keepbook...`` module (the longest matching package)."""
    if name in ("keepbook", "keepbook.keep"):
        return "namespace"  # the namespace packages: a version string and docstrings only
    best = None
    for folder, (package, domain) in FOLDERS.items():
        if name == package or name.startswith(package + "."):
            if best is None or len(package) > len(best[0]):
                best = (package, domain)
    return best[1] if best else None


def is_module(name: str) -> bool:
    """Is ``name`` a module or package of the source tree (not an attribute of one)?"""
    for folder, (package, _) in FOLDERS.items():
        if name == package:
            return True
        if name.startswith(package + "."):
            rest = name[len(package) + 1:].split(".")
            path = ROOT / folder / Path(*rest)
            if path.with_suffix(".py").is_file() or (path / "__init__.py").is_file():
                return True
    return False


def source_files() -> list[tuple[Path, str, str]]:
    """(file, its dotted module name, its domain) for every source file of the package."""
    out = []
    for folder, (package, domain) in FOLDERS.items():
        base = ROOT / folder
        for path in sorted(base.rglob("*.py")):
            rel = path.relative_to(base).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            # a deeper folder that is a domain of its own is checked as that domain
            owner = max((f for f in FOLDERS if (ROOT / f) in path.parents or ROOT / f == path.parent),
                        key=len)
            if owner != folder:
                continue
            out.append((path, ".".join([package, *parts]), domain))
    return out


def imports_of(path: Path, module: str) -> list[tuple[int, str]]:
    """Every keepbook module ``path`` imports: (line, absolute module name)."""
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"
    package = module if is_pkg else module.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((node.lineno, target))
            # "from keepbook.keep import host" imports the subpackage keepbook.keep.host
            found += [(node.lineno, f"{target}.{a.name}") for a in node.names
                      if is_module(f"{target}.{a.name}")]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            fn = node.func
            fname = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", "")
            if fname in ("import_module", "__import__"):
                found.append((node.lineno, node.args[0].value))
    return [(line, name) for line, name in found if name.startswith("keepbook")]


def crossings() -> list[str]:
    bad = []
    for path, module, domain in source_files():
        for line, target in imports_of(path, module):
            tdomain = domain_of_module(target)
            if tdomain in (None, "namespace") or tdomain in ALLOWED[domain]:
                continue
            bad.append(f"{path.relative_to(ROOT)}:{line}: {domain} code imports {target} "
                       f"({tdomain})")
    return bad


def test_every_source_file_has_a_domain():
    owned = {p for p, _, _ in source_files()}
    stray = [p for p in (ROOT / "keep").rglob("*.py") if p not in owned
             and p != ROOT / "keep" / "__init__.py"]
    assert stray == [], f"files outside every trust domain: {stray}"


def test_no_import_crosses_a_trust_domain():
    assert crossings() == []


@pytest.mark.parametrize("src,dst", [("user", "host"), ("user", "inside"), ("host", "inside"),
                                     ("host", "user"), ("inside", "host"), ("inside", "user"),
                                     ("shared", "user"), ("shared", "inside"), ("shared", "host")])
def test_the_check_catches_each_kind_of_crossing(tmp_path, monkeypatch, src, dst):
    """The checker is not vacuous: a planted import of each forbidden kind is reported."""
    folder = {d: f for f, (_, d) in FOLDERS.items() if d not in ("launcher", "bench")}
    target = {"user": "keepbook.kernel.client", "host": "keepbook.keep.host.keepmgr",
              "inside": "keepbook.keep.inside.server", "shared": "keepbook.keep.shared.protocol"}[dst]
    planted = ROOT / folder[src] / "_planted_crossing_test.py"
    planted.write_text(f"def f():\n    from {target.rpartition('.')[0]} import {target.rpartition('.')[2]}\n")
    try:
        found = crossings()
    finally:
        planted.unlink()
    assert any("_planted_crossing_test.py" in line and target in line for line in found), found


def test_measured_keep_files_are_the_keep_and_shared_packages():
    """The Keep's measurement covers exactly what runs inside it: keep/inside and keep/shared."""
    from keepbook.keep.shared import measurement

    files = {p.resolve() for p in measurement.in_keep_files()}
    expected = {p.resolve() for folder in ("keep/inside", "keep/shared")
                for p in (ROOT / folder).rglob("*") if p.is_file() and p.suffix == ".py"
                and "__pycache__" not in p.parts}
    assert expected <= files
    assert not any("host" in p.relative_to(ROOT / "keep").parts[:1] for p in files
                   if (ROOT / "keep") in p.parents)
    assert not any((ROOT / "kernel") in p.parents for p in files)
