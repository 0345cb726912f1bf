"""Where `pacs serve` spends its samples, from py-spy's raw (collapsed) output.

Each part is the share of all samples whose stack contains the part's frame (inclusive: the
parts nest, e.g. ``record_instance`` is inside ``index write transaction``).

Also in milliseconds of sampled (non-idle) thread time per instance, for *instances* received
at py-spy's *rate* (Hz).

Usage: python bench/profile_summary.py PROFILE.txt [INSTANCES [RATE]]
"""

from __future__ import annotations

import sys
from pathlib import Path

# (label, substring of a frame "function (file:line)"), outermost first.
PARTS = (
    ("C-STORE handler", "handle_store ("),
    ("  parse + validate", "from_dataset ("),
    ("  locate (Part 10 / meta)", "locate ("),
    ("  SHA-256", "hexdigest ("),
    ("  duplicate check (read transaction)", "stored_version ("),
    ("  facility of the study", "study_facility ("),
    ("  blob write", "put ("),
    ("  index write transaction", "write ("),
    ("    record_instance", "record_instance ("),
    ("      _touch (series/study times)", "_touch ("),
    ("      change-feed row", "append_change ("),
    ("    audit row", "append_event ("),
    ("pynetdicom DUL thread", "pynetdicom/dul.py:"),
    ("pynetdicom association thread", "_run_reactor ("),
    ("  DIMSE message decode", "decode_msg ("),
)


def main() -> None:
    counts: dict[str, int] = dict.fromkeys((label for label, _ in PARTS), 0)
    total = 0
    for line in Path(sys.argv[1]).read_text().splitlines():
        stack, _, number = line.rpartition(" ")
        if not number.isdigit():
            continue
        samples = int(number)
        total += samples
        for label, frame in PARTS:
            if frame in stack:
                counts[label] += samples
    instances = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    rate = float(sys.argv[3]) if len(sys.argv) > 3 else 200.0
    print(f"{total} samples; % of all samples, ms per instance over {instances} instances")
    for label, count in counts.items():
        share = 100 * count / max(total, 1)
        print(f"{label:<40} {share:5.1f} % {1000 * count / rate / instances:7.2f} ms")


if __name__ == "__main__":
    main()
