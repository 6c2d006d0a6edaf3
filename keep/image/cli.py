"""``keepbook image build | lock | show`` — the command line of the image builder."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from keepbook.keep.shared import vm_image


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="keepbook image",
                                 description="Build and inspect the Keep image (kernel + initramfs).")
    sub = ap.add_subparsers(dest="sub", required=True)
    b = sub.add_parser("build", help="build the image from the pinned inputs; prints its digest")
    b.add_argument("-o", "--output", type=Path, default=None,
                   help=f"image directory (default ${vm_image.ENV_DIR} or {vm_image.default_dir()})")
    b.add_argument("--cache", type=Path, default=None, help="where downloaded inputs are kept")
    b.add_argument("--force", action="store_true", help="rebuild even if the image is up to date")
    b.add_argument("--optional", action="store_true",
                   help="set-up use: if the image cannot be built here, say why and exit 0")
    b.add_argument("-q", "--quiet", action="store_true")
    lk = sub.add_parser("lock", help="re-pin the inputs to apt's and PyPI's current versions "
                                      "(rewrites keep/image/inputs.lock; changes the digest)")
    lk.add_argument("--cache", type=Path, default=None)
    s = sub.add_parser("show", help="check a built image and print its manifest")
    s.add_argument("directory", nargs="?", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.sub == "show":
        try:
            img = vm_image.KeepImage.load(args.directory)
        except vm_image.ImageError as exc:
            print(f"keepbook image show: {exc}", file=sys.stderr)
            return 1
        print(json.dumps(img.manifest, indent=1, sort_keys=True))
        return 0
    from keepbook.keep.image import build as build_mod, lock as lock_mod
    from keepbook.keep.image.debs import DebError
    from keepbook.keep.image.kmod import ModuleError
    from keepbook.keep.image.wheels import WheelError

    failures = (build_mod.BuildError, lock_mod.LockError, DebError, WheelError, ModuleError,
                vm_image.ImageError, OSError)
    cache = args.cache or build_mod.default_cache()
    if args.sub == "lock":
        try:
            new = lock_mod.relock(cache)
        except failures as exc:
            print(f"keepbook image lock: {exc}", file=sys.stderr)
            return 1
        print(f"pinned {len(new.debs)} Debian packages and {len(new.wheels)} wheels in "
              f"{lock_mod.LOCK_FILE}")
        return 0
    say = (lambda s: None) if args.quiet else (lambda s: print(f"  {s}", file=sys.stderr))
    try:
        img = build_mod.build(args.output, cache=cache, force=args.force, log=say)
    except failures as exc:
        print(f"keepbook image build: {exc}", file=sys.stderr)
        if args.optional:
            print("keepbook image build: no Keep image — the kvm backend and its tests are "
                  "skipped on this machine", file=sys.stderr)
            return 0
        return 1
    print(f"Keep image {img.digest}  ({img.dir})")
    return 0
