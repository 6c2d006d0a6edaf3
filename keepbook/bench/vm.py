"""A Keep that is its own VM: time to the first result of a `kvm` Keep (QEMU boots the Keep
image, the wasmldr starts inside it, attest with a fresh nonce, provision, a trivial WAT cell)
beside a process Keep (`nil`) measured the same way in the same run; and the time to build the
Keep image from cached inputs.  Enarx's published SEV Keep start (0.79 s) is a fixed reference
line in docs/PERFORMANCE.md, not measured here."""

from __future__ import annotations

import re
import tempfile
import time
from pathlib import Path

from .core import Row, Sample, not_measured
from .lab import Lab, Manager


def _vm_unavailable() -> str | None:
    from keepbook.keep.host import vm

    ok, why = vm.availability("kvm")
    return None if ok else why


def first_result_rows(reps: int) -> list[Row]:
    why = _vm_unavailable()
    if why:
        return [not_measured("kvm_first_result_s", "s", None, why)]
    base, value = Sample(), Sample()
    mgr = Manager(backends="nil,kvm")
    try:
        nil = Lab(mgr, "nil")
        nil.first_result("wasm")  # warm-up: the client's imports, page cache
        for _ in range(reps):
            base.add(nil.first_result("wasm"))
        nil.stop()
        kvm = Lab(mgr, "kvm")
        accel = ""
        for _ in range(reps):
            value.add(kvm.first_result("wasm"))
        accel = _accel(mgr)
        kvm.stop()
    finally:
        mgr.stop()
    return [Row("kvm_first_result_s", "s", value, base, None,
                note=f"kvm Keep ({accel}): QEMU boot + wasmldr start + attest + provision + "
                     "trivial WAT cell; baseline: a nil process Keep, same path",
                baseline_label="nil (process) Keep first result")]


def _accel(mgr: Manager) -> str:
    """KVM or TCG, as the loader logged it (the host's lifecycle log)."""
    text = "".join(p.read_text(errors="replace") for p in Path(mgr.dir).rglob("*.stderr"))
    found = set(re.findall(r'"event": "vm-booted"[^}]*"accel": "(\w+)"', text))
    return "/".join(sorted(found)).upper() or "acceleration unknown"


def image_build_rows() -> list[Row]:
    from keepbook.keep.image import build

    with tempfile.TemporaryDirectory(prefix="keepbook-bench-image-") as tmp:
        t = time.perf_counter()
        try:
            build.build(Path(tmp) / "image", force=True)
        except Exception as exc:  # no apt, no cache: say why
            return [not_measured("image_build_s", "s", None, f"{type(exc).__name__}: {exc}")]
        took = time.perf_counter() - t
        t = time.perf_counter()
        build.build(Path(tmp) / "image")  # up to date: the set-up cost of `make test` afterwards
        check = time.perf_counter() - t
    return [Row("image_build_s", "s", took, check, None,
                note="keepbook image build --force from cached inputs (the first build also "
                     "downloads ~100 MB of .debs and wheels); baseline: the up-to-date check",
                baseline_label="image already up to date")]


def rows(reps: int) -> list[Row]:
    return image_build_rows() + first_result_rows(reps)
