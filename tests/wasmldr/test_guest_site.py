"""The files the Keep's Python reads beyond its interpreter image (IPython and its
dependencies, package data) are exactly the measured ones."""

from __future__ import annotations

import os

import pytest

from keepbook.keep.inside import guest_site
from keepbook.keep.shared import guest_packages, measurement


def test_the_staged_files_are_in_the_measurement(monkeypatch):
    before = measurement.measurement.__wrapped__()
    rel, path = guest_packages.files()[0]
    monkeypatch.setattr(guest_packages, "digest", lambda: "0" * 96)  # one byte of them changed
    assert measurement.measurement.__wrapped__() != before
    monkeypatch.setattr(guest_packages, "versions", lambda: {"ipython": "0.0"})
    assert "guest:ipython" in measurement.runtime_versions()


def test_staging_refuses_files_that_changed_after_the_measurement(monkeypatch):
    monkeypatch.setattr(guest_site, "_staged", None)
    monkeypatch.setattr(guest_packages, "digest", lambda: "f" * 96)
    with pytest.raises(guest_site.StagingFailed, match="changed after the Keep was measured"):
        guest_site.host_dir()


def test_staged_folder_holds_the_listed_files_and_the_guest_package():
    root = guest_site.host_dir()
    staged = {p.relative_to(root / "site").as_posix() for p in (root / "site").rglob("*")
              if p.is_file()}
    listed = {rel for rel, _ in guest_packages.files()}
    assert listed <= staged
    extra = staged - listed
    assert extra and all(x.startswith(guest_site.GUEST_PACKAGE + "/") for x in extra)
    assert "IPython/core/interactiveshell.py" in listed


def test_a_keep_without_the_packages_is_measured_and_refuses_python(monkeypatch):
    """A Keep image without the Python engine (docs/keep-image.md) lacks IPython too: its
    measurement still computes (and differs), and staging says what is missing."""
    measured = measurement.measurement.__wrapped__()
    real = guest_packages._distribution
    monkeypatch.setattr(guest_packages, "_distribution",
                        lambda name: None if name == "ipython" else real(name))
    guest_packages.files.cache_clear()
    monkeypatch.setattr(guest_packages, "digest", guest_packages.digest.__wrapped__)
    try:
        assert guest_packages.missing() == ["ipython"]
        assert measurement.measurement.__wrapped__() != measured
        monkeypatch.setattr(guest_site, "_staged", None)
        with pytest.raises(guest_packages.GuestPackagesMissing, match="needs ipython"):
            guest_site.host_dir()
    finally:
        guest_packages.files.cache_clear()


def test_staged_files_have_the_fixed_mtime_that_keeps_bytecode_valid_across_processes():
    root = guest_site.host_dir()
    some = next(p for p in (root / "site").rglob("*.py"))
    assert some.stat().st_mtime == guest_site.STAGED_MTIME


def test_the_shared_bytecode_folder_is_made_whole_private_and_keyed_by_the_sources(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert guest_site.shared_pycache() is None
    seen = []

    def compile_into(folder):
        seen.append(folder)
        assert guest_site.shared_pycache() is None  # not visible while it is being filled
        (folder / "opt" / "keep" / "site").mkdir(parents=True)
        (folder / "opt" / "keep" / "site" / "m.cpython-315.pyc").write_bytes(b"bytecode")

    made = guest_site.fill_shared_pycache(compile_into)
    assert made is not None and made == guest_site.shared_pycache()
    assert made.name == guest_site.pycache_key() and made.parent == guest_site.pycache_root()
    pyc = made / "opt" / "keep" / "site" / "m.cpython-315.pyc"
    assert pyc.read_bytes() == b"bytecode" and (pyc.stat().st_mode & 0o777) == 0o400
    assert (made.stat().st_mode & 0o777) == 0o700
    assert not seen[0].exists()  # renamed into place
    assert guest_site.pycache_dir() == made
    # a second fill finds it and compiles nothing
    assert guest_site.fill_shared_pycache(lambda f: seen.append(f)) == made and len(seen) == 1
    # other sources: another key, so this bytecode is never read for them
    monkeypatch.setattr(guest_packages, "digest", lambda: "e" * 96)
    assert guest_site.shared_pycache() is None


def test_a_shared_bytecode_folder_others_can_write_or_a_link_is_ignored(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    made = guest_site.fill_shared_pycache(lambda f: None)
    assert made is not None
    os.chmod(made, 0o777)
    assert guest_site.shared_pycache() is None
    os.chmod(made, 0o700)
    os.chmod(made.parent, 0o755)  # the cache root others can read and enter: ignored too
    assert guest_site.shared_pycache() is None
    os.chmod(made.parent, 0o700)
    elsewhere = tmp_path / "elsewhere"
    os.rename(made, elsewhere)
    os.symlink(elsewhere, made)
    assert guest_site.shared_pycache() is None
