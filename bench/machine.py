"""The machine a benchmark ran on, in one line: every bench prints it beside its figures."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown cpu"


def describe(*extras: str) -> str:
    """``node | cpu | N cores (U usable) | memory | Python`` and ``extras`` (library versions)."""
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return " | ".join([platform.node(), cpu_model(), f"{os.cpu_count()} cores ({usable} usable)",
                       f"{mem_gib:.1f} GiB", f"Python {platform.python_version()}", *extras])
