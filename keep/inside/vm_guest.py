"""What a Keep that is its own VM knows about how it was booted — inside the Keep.

The launcher appends ``keepbook.image=<digest>`` to the kernel command line; the wasmldr puts
it into the attested config (``runtime.image``).  In a ``kvm`` Keep nothing vouches for it (NO
PROTECTION (VM)): it tells the client which image the host says it booted.  In an SEV-SNP
Keep the command line is part of the launch measurement, so the measurement proves it."""

from __future__ import annotations

from pathlib import Path

from keepbook.keep.shared import vm_image

CMDLINE = Path("/proc/cmdline")


def kernel_args(path: Path = CMDLINE) -> dict[str, str]:
    try:
        words = path.read_text().split()
    except OSError:
        return {}
    return dict(w.split("=", 1) for w in words if "=" in w)


def runtime_facts(backend: str, path: Path = CMDLINE) -> dict[str, str]:
    """``{"image": digest}`` for a VM Keep booted from the Keep image; nothing otherwise."""
    if backend not in vm_image.VM_BACKENDS:
        return {}
    digest = kernel_args(path).get(vm_image.IMAGE_ARG, "")
    return {"image": digest[:64] if digest else "unknown (no keepbook.image= on the kernel command line)"}
