"""VM Keeps: what the tests need, and a clear skip when this machine cannot boot one.

The Keep image is built in set-up (`make test` runs `keepbook image build --optional`; `.ci/run`
installs QEMU), never inside a test's timeout.  A missing QEMU, a missing image or an image
built from other sources than this checkout is a skip that says what to run."""

from __future__ import annotations

import shutil

import pytest

from keepbook.keep.shared import vm_image


def vm_skip_reason() -> str | None:
    if shutil.which("qemu-system-x86_64") is None:
        return ("QEMU is not installed: `sudo apt-get install qemu-system-x86` (.ci/run installs "
                "it) — the kvm Keep tests need it")
    try:
        image = vm_image.KeepImage.load()
    except vm_image.ImageError as exc:
        return f"{exc} (`make test` builds it in set-up)"
    from keepbook.keep.image import build, lock

    if image.manifest.get("inputs_key") != build.inputs_key(lock.load()):
        return (f"the Keep image in {image.dir} was built from other sources than this checkout: "
                "rebuild it with `keepbook image build`")
    return None


_REASON = vm_skip_reason()
requires_vm = pytest.mark.skipif(_REASON is not None, reason=_REASON or "")
