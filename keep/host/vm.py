"""A Keep as its own virtual machine: QEMU's command lines for the ``kvm``, ``snp`` and ``tdx``
backends, and the checks before them.  On the untrusted host: it boots the measured Keep image
and relays bytes; it never runs inside the VM, and nothing in the VM is shared with it (no host
directory, no agent — a control port and one forwarded TCP port).

``kvm`` is the seed's debugging Keep: the image in a plain VM, KVM acceleration when
``/dev/kvm`` really runs a guest, software emulation (TCG) otherwise.  ``snp`` and ``tdx`` are
the same image launched as a confidential VM (QEMU ≥ 9.1 ``sev-snp-guest`` with an OVMF built
from edk2's AmdSev package and kernel hashes; QEMU ≥ 10.1 ``tdx-guest`` with TDVF).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from keepbook.keep.shared import vm_image

QEMU = "qemu-system-x86_64"
INSTALL_QEMU = "sudo apt-get install qemu-system-x86   (Debian/Ubuntu)"
#: memory the guest needs besides the Keep's own limit: kernel, the initramfs held in RAM
#: (~110 MB), CPython, wasmtime
GUEST_OVERHEAD_MIB = 512
MAX_GUEST_MIB = 64 * 1024
#: QEMU's minimal firmware: boots a -kernel in a fraction of SeaBIOS's time under emulation
QBOOT = Path("/usr/share/qemu/qboot.rom")
ACCEL_ENV = "KEEPBOOK_VM_ACCEL"         # auto (default) | kvm | tcg
KVM_PROBE_S = 8.0
TDX_FIRMWARE_ENV = "KEEPBOOK_TDX_FIRMWARE"  # TDVF (OVMF built from OvmfPkg/IntelTdx)
TDX_FIRMWARE_DEFAULT = Path("/usr/share/ovmf/OVMF.inteltdx.fd")


class VmUnavailable(RuntimeError):
    """This host cannot start the VM; the message says what to install or build."""


@dataclass(frozen=True)
class Accel:
    name: str      # "kvm" | "tcg"
    reason: str

    def describe(self) -> str:
        kind = "KVM acceleration" if self.name == "kvm" else "software emulation (TCG)"
        return f"{kind}: {self.reason}"


def find_qemu() -> str:
    path = shutil.which(QEMU)
    if path is None:
        raise VmUnavailable(f"QEMU is not installed ({QEMU} is not on PATH); install it: "
                            f"{INSTALL_QEMU}")
    return path


def load_image() -> vm_image.KeepImage:
    try:
        return vm_image.KeepImage.load()
    except vm_image.ImageError as exc:
        raise VmUnavailable(str(exc)) from None


def availability(backend: str) -> tuple[bool, str]:
    """Can this host start a ``backend`` VM Keep now?  Cheap: no boot, no digest check."""
    try:
        find_qemu()
    except VmUnavailable as exc:
        return False, str(exc)
    if not (vm_image.default_dir() / vm_image.MANIFEST).is_file():
        return False, (f"no Keep image in {vm_image.default_dir()}: build it with "
                       "`keepbook image build`")
    if backend == "kvm":
        return True, "the Keep image in a QEMU VM (KVM if /dev/kvm runs guests, else TCG)"
    if backend == "snp":
        return _confidential_host("SEV-SNP", Path("/sys/module/kvm_amd/parameters/sev_snp"),
                                  vm_image.snp_ovmf_path())
    if backend == "tdx":
        return _confidential_host("TDX", Path("/sys/module/kvm_intel/parameters/tdx"),
                                  _firmware(TDX_FIRMWARE_ENV, TDX_FIRMWARE_DEFAULT))
    return False, f"{backend} is not a VM backend"


def _firmware(env: str, default: Path) -> Path:
    return Path(os.environ.get(env) or default)


def _confidential_host(tee: str, param: Path, firmware: Path) -> tuple[bool, str]:
    try:
        enabled = param.read_text().strip() in ("Y", "1")
    except OSError:
        enabled = False
    if not enabled:
        return False, f"this host's KVM does not offer {tee} guests ({param} is not Y)"
    if not firmware.is_file():
        return False, f"no {tee} guest firmware at {firmware}"
    return True, f"the Keep image as a {tee} confidential VM (firmware {firmware})"


def guest_memory_mib(limits: dict) -> int:
    """The VM's memory: the Keep's memory limit plus what its kernel and runtime need."""
    mib = -(-int(limits["memory_bytes"]) // (1 << 20)) + GUEST_OVERHEAD_MIB
    return min(mib, MAX_GUEST_MIB)


# ---------------------------------------------------------------------- acceleration


def _probe_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "keepbook" / "kvm-probe.json"


def probe_kvm(qemu: str, image: vm_image.KeepImage) -> tuple[bool, str]:
    """Does KVM really run this image's kernel here?  Opening /dev/kvm is not enough: nested
    KVM can accept the VM and stall its kernel early in boot.  So the kernel is booted without
    an initramfs; reaching its "no root file system" panic (QEMU then exits: -no-reboot)
    within a few seconds proves it runs.  The answer is cached per host kernel, QEMU and
    image kernel."""
    dev = Path("/dev/kvm")
    if not dev.exists():
        return False, "/dev/kvm does not exist"
    if not os.access(dev, os.R_OK | os.W_OK):
        return False, "/dev/kvm is not readable and writable by this user"
    key = f"{platform.release()} {_qemu_version(qemu)} {image.manifest['files'][vm_image.KERNEL]}"
    cache = _probe_cache()
    try:
        cached = json.loads(cache.read_text())
        if cached.get("key") == key:
            return bool(cached["ok"]), str(cached["reason"])
    except (OSError, ValueError, KeyError):
        pass
    cmd = [qemu, "-accel", "kvm", "-cpu", "host", "-m", "256", "-nodefaults", "-nographic",
           "-no-reboot", "-monitor", "none", "-serial", "stdio", *_firmware_args(),
           "-kernel", str(image.kernel), "-append", "console=ttyS0 panic=-1"]
    t0 = time.monotonic()
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=KVM_PROBE_S,
                           stdin=subprocess.DEVNULL)
        console = r.stdout
        if "Kernel panic" in console or "VFS: Unable to mount root" in console:
            ok, reason = True, f"/dev/kvm booted the Keep kernel in {time.monotonic() - t0:.1f} s"
        else:
            err = (r.stderr.strip().splitlines() or [f"exit code {r.returncode}"])[-1]
            ok, reason = False, f"/dev/kvm cannot run the Keep kernel (QEMU: {err[:160]})"
    except subprocess.TimeoutExpired:
        ok, reason = False, (f"/dev/kvm accepted the VM but its kernel stalled (no boot within "
                             f"{KVM_PROBE_S:.0f} s; nested KVM?)")
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({"key": key, "ok": ok, "reason": reason}))
    except OSError:
        pass
    return ok, reason


def choose_accel(qemu: str, image: vm_image.KeepImage) -> Accel:
    wanted = os.environ.get(ACCEL_ENV, "auto")
    if wanted == "tcg":
        return Accel("tcg", f"{ACCEL_ENV}=tcg")
    ok, reason = probe_kvm(qemu, image)
    if ok:
        return Accel("kvm", reason)
    if wanted == "kvm":
        raise VmUnavailable(f"{ACCEL_ENV}=kvm but {reason}")
    return Accel("tcg", reason)


def _qemu_version(qemu: str) -> str:
    try:
        out = subprocess.run([qemu, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.splitlines()[0] if out else "unknown"


def _firmware_args() -> list[str]:
    return ["-bios", str(QBOOT)] if QBOOT.is_file() else []


# ---------------------------------------------------------------------- command lines


@dataclass(frozen=True)
class Launch:
    """What one VM Keep is booted with, whatever protects it."""

    image: vm_image.KeepImage
    backend: str
    memory_mib: int
    control_socket: Path
    host_port: int

    def cmdline(self) -> str:
        return self.image.launch_cmdline(self.backend)

    def devices(self) -> list[str]:
        """What every VM Keep has.  No host file sharing; the network is QEMU's user mode,
        restricted (the guest reaches nothing), with one host port forwarded to the Keep's
        HTTPS port; the control channel is a virtio-serial port on a unix socket; the
        console (kernel and /init lifecycle lines) is QEMU's stdout."""
        fwd = (f"hostfwd=tcp:127.0.0.1:{self.host_port}-{vm_image.GUEST_ADDRESS}:"
               f"{vm_image.GUEST_PORT}")
        return ["-nodefaults", "-nographic", "-no-reboot", "-monitor", "none", "-serial", "stdio",
                "-kernel", str(self.image.kernel), "-initrd", str(self.image.initrd),
                "-append", self.cmdline(),
                "-device", "virtio-rng-pci",
                "-netdev", f"user,id=net0,restrict=on,{fwd}",
                "-device", "virtio-net-pci,netdev=net0,romfile=",
                "-device", "virtio-serial-pci",
                "-chardev", f"socket,id=control,path={self.control_socket}",
                "-device", f"virtserialport,chardev=control,name={vm_image.CONTROL_PORT}"]


def kvm_command(qemu: str, launch: Launch, accel: Accel) -> list[str]:
    """A plain VM: no memory protection (NO PROTECTION (VM))."""
    cpu = ["-accel", "kvm", "-cpu", "host"] if accel.name == "kvm" else ["-accel", "tcg", "-cpu", "max"]
    return [qemu, *cpu, "-machine", "pc", "-m", str(launch.memory_mib), "-smp", "1",
            *_firmware_args(), *launch.devices()]


def snp_command(qemu: str, launch: Launch, ovmf: Path) -> list[str]:
    """An SEV-SNP guest (QEMU ≥ 9.1): the launch measurement covers OVMF and — through
    ``kernel-hashes=on`` — the kernel, initramfs and command line, which OVMF's AmdSev build
    checks before it jumps to the kernel.  vCPU count and type, policy and guest features are
    the ones the client's expected measurement assumes (keep/vm_image.py)."""
    return [qemu, "-accel", "kvm", "-cpu", vm_image.SNP_VCPU_TYPE,
            "-machine", "q35,confidential-guest-support=sev0,memory-backend=ram0",
            "-object", f"memory-backend-memfd,id=ram0,size={launch.memory_mib}M",
            "-object", ("sev-snp-guest,id=sev0,cbitpos=51,reduced-phys-bits=1,kernel-hashes=on,"
                        f"policy={vm_image.SNP_POLICY:#x}"),
            "-smp", str(vm_image.SNP_VCPUS), "-bios", str(ovmf), *launch.devices()]


def tdx_command(qemu: str, launch: Launch, tdvf: Path) -> list[str]:
    """A TDX guest (QEMU ≥ 10.1): MRTD measures TDVF; TDVF extends the kernel, initramfs and
    command line into the RTMRs as it loads them."""
    return [qemu, "-accel", "kvm", "-cpu", "host",
            "-machine", "q35,kernel-irqchip=split,confidential-guest-support=tdx0",
            "-object", "tdx-guest,id=tdx0", "-m", str(launch.memory_mib), "-smp", "1",
            "-bios", str(tdvf), *launch.devices()]


def command(qemu: str, launch: Launch, accel: Accel) -> list[str]:
    """The QEMU command line for ``launch.backend``."""
    if launch.backend == "kvm":
        return kvm_command(qemu, launch, accel)
    if launch.backend == "snp":
        return snp_command(qemu, launch, vm_image.snp_ovmf_path())
    if launch.backend == "tdx":
        return tdx_command(qemu, launch, _firmware(TDX_FIRMWARE_ENV, TDX_FIRMWARE_DEFAULT))
    raise VmUnavailable(f"{launch.backend} is not a VM backend")
