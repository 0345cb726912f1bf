"""The machine a benchmark ran on, as every ``bench/results`` file records it, and the frame
of such a file."""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

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


def save(
    path: Path, name: str, args: argparse.Namespace, summary: dict[str, Any], **rest: Any
) -> None:
    """Write the result file *path*: the benchmark's *name*, the command that ran it, when,
    on what machine, with which settings, its *summary* and the *rest*; print the summary."""
    document = {
        "benchmark": name,
        "command": f"python bench/{Path(sys.argv[0]).name} " + " ".join(sys.argv[1:]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "settings": vars(args),
        "summary": summary,
        **rest,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


def cpu_seconds(pid: int, system_only: bool = False) -> float:
    """User + system (or only system) CPU seconds of process *pid* so far
    (``/proc/PID/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[12]) if system_only else int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def wait_port(port: int, timeout: float = 60.0) -> None:
    """Wait until something accepts connections on 127.0.0.1:*port*."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), 0.5):
                time.sleep(0.2)  # the connection just made is an association that never comes
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"port {port} never opened")


def wait_log_lines(
    log: Path, text: str, count: int, process: subprocess.Popen[bytes], timeout: float = 300.0
) -> None:
    """Wait until *log* holds *count* lines with *text* (e.g. one per server process that says
    it listens); a server that exits first is an error."""
    deadline = time.monotonic() + timeout
    while log.read_text(errors="replace").count(text) < count:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"fewer than {count} {text!r} lines in {log}")
        time.sleep(0.05)
