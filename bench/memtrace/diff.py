"""The Python allocations that grew between two tracemalloc snapshots of ``pacs serve``
(``bench/memtrace/sitecustomize.py``), by the line that made them::

    python bench/memtrace/diff.py FIRST.pickle LATER.pickle --top 15
"""

from __future__ import annotations

import argparse
import tracemalloc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("first")
    parser.add_argument("later")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--callers", type=int, default=3, help="whole tracebacks of the top N")
    args = parser.parse_args()
    first = tracemalloc.Snapshot.load(args.first)
    later = tracemalloc.Snapshot.load(args.later)
    total = sum(s.size for s in later.statistics("filename")) - sum(
        s.size for s in first.statistics("filename")
    )
    print(f"traced Python memory grew by {total / 2**20:.2f} MiB")
    for stat in later.compare_to(first, "lineno")[: args.top]:
        print(f"{stat.size_diff / 2**10:+10.1f} KiB {stat.count_diff:+8d} blocks  {stat.traceback}")
    for stat in later.compare_to(first, "traceback")[: args.callers]:
        print(f"\n{stat.size_diff / 2**10:+.1f} KiB {stat.count_diff:+d} blocks allocated at:")
        print("\n".join(stat.traceback.format()))


if __name__ == "__main__":
    main()
