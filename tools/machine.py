"""This machine, named for result tables."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def machine_name() -> str:
    """A short description of this machine's processor, for result tables."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cpu}, {cores} cores"  # the cores this process may use, not all the host has
