"""The machine a benchmark ran on, as every ``bench/results`` file records it."""

from __future__ import annotations

import os
import platform

import psutil


def machine(**extra: object) -> dict[str, object]:
    """CPUs, memory, Python and platform, the load average (timings scale with other work on
    the machine: compare runs made at similar load), and *extra* (e.g. the torch device)."""
    return {
        "cpus": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average": [round(v, 2) for v in os.getloadavg()],
        **extra,
    }
