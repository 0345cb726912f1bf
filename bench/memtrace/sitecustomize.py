"""Memory tracing of a ``pacs serve`` under a benchmark, without touching the product: with this
folder on ``PYTHONPATH`` and ``PACS_DEBUG_TRACEMALLOC`` naming a folder, the first SIGUSR1
starts tracing Python allocations (``tracemalloc``, 5 frames; from start-up it would slow the
imports past the start timeout), and each SIGUSR1 writes a snapshot there
(``snapshot-<n>.pickle``): what a later one holds beyond the first was allocated after tracing
began and is still alive. ``bench/memtrace/diff.py`` compares two of them."""

from __future__ import annotations

import os
import signal
import tracemalloc
from pathlib import Path
from types import FrameType

_FOLDER = os.environ.get("PACS_DEBUG_TRACEMALLOC")

if _FOLDER:
    _taken = [0]

    def _snapshot(signum: int, frame: FrameType | None) -> None:
        if not tracemalloc.is_tracing():
            tracemalloc.start(5)
        _taken[0] += 1
        path = Path(_FOLDER) / f"snapshot-{_taken[0]}.pickle"
        partial = path.with_suffix(".partial")
        tracemalloc.take_snapshot().dump(str(partial))
        partial.replace(path)  # whole, or not there

    signal.signal(signal.SIGUSR1, _snapshot)
