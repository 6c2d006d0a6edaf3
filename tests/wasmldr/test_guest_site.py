"""The files the Keep's Python reads beyond its interpreter image (IPython and its
dependencies, package data) are exactly the measured ones."""

from __future__ import annotations

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
