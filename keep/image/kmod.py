"""Kernel modules for the image: which ``.ko`` files a wanted driver needs, and in which order
to load them.  Debian's kernel package ships no ``modules.dep`` (depmod runs at install), so
the dependencies are read from each module's own ``.modinfo`` section."""

from __future__ import annotations

import struct


class ModuleError(RuntimeError):
    pass


def modinfo(ko: bytes) -> dict[str, str]:
    """The ``key=value`` strings of an ELF64 kernel module's ``.modinfo`` section."""
    if ko[:4] != b"\x7fELF" or ko[4] != 2:
        raise ModuleError("not an ELF64 kernel module")
    shoff, = struct.unpack_from("<Q", ko, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", ko, 0x3A)

    def section(i: int) -> tuple[int, int, int]:
        name, _type, _flags, _addr, off, size = struct.unpack_from("<IIQQQQ", ko, shoff + i * shentsize)
        return name, off, size

    _, str_off, _ = section(shstrndx)
    for i in range(shnum):
        name_at, off, size = section(i)
        end = ko.index(b"\0", str_off + name_at)
        if ko[str_off + name_at:end] == b".modinfo":
            out: dict[str, str] = {}
            for item in ko[off:off + size].split(b"\0"):
                key, sep, value = item.decode(errors="replace").partition("=")
                if sep:
                    out.setdefault(key, value)
            return out
    return {}


def canonical(name: str) -> str:
    return name.replace("-", "_")


def load_order(wanted: list[str], modules: dict[str, bytes]) -> list[str]:
    """Module names (canonical) in an order where each comes after its dependencies.
    ``modules``: canonical name → ``.ko`` bytes of every module the kernel package has."""
    order: list[str] = []

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if name in order:
            return
        if name in chain:
            raise ModuleError(f"module dependency loop: {' → '.join(chain + (name,))}")
        if name not in modules:
            raise ModuleError(f"the kernel package has no module {name!r}"
                              + (f" (needed by {chain[-1]})" if chain else ""))
        deps = modinfo(modules[name]).get("depends", "")
        for dep in sorted(d for d in deps.split(",") if d):
            visit(canonical(dep), chain + (name,))
        order.append(name)

    for w in wanted:
        visit(canonical(w), ())
    return order
