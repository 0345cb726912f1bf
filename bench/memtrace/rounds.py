"""Rounds of new mutants by C-STORE and STOW-RS to one ``pacs serve`` traced by
``bench/memtrace/sitecustomize.py``: the server's RSS after each round and a tracemalloc
snapshot after the first and the last, then what grew in between (``diff.py``)::

    nice python bench/memtrace/rounds.py --per-round 700 --rounds 4
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.fuzzing.campaign import Corpus
from bench.fuzzing.mutate import seed_files
from bench.fuzzing.outcomes import Tally
from bench.fuzzing.senders import CStoreSender, stow
from tests.servers import DATA, PacsServer

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-round", type=int, default=700, help="mutants per interface")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--keep", type=Path, help="a folder to copy the snapshots to")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    corpus = Corpus.of(seed_files(DATA))
    with tempfile.TemporaryDirectory(prefix="pacs-memtrace-") as tmp:
        snapshots = Path(tmp) / "snapshots"
        snapshots.mkdir()
        env = {
            "PACS_DEBUG_TRACEMALLOC": str(snapshots),
            "PYTHONPATH": f"{HERE}{os.pathsep}{REPO}",
        }
        server = PacsServer(Path(tmp) / "home", env=env).start()
        assert server.process is not None
        process = psutil.Process(server.process.pid)
        sender = CStoreSender(server.port, corpus.contexts)
        client = server.client("modality")
        cstore, stowed = Tally(), Tally()
        try:
            for number in range(args.rounds):
                offset = number * args.per_round
                for mutant in corpus.mutants(args.per_round, offset=offset):
                    sender.send(mutant, cstore)
                for mutant in corpus.mutants(args.per_round, offset=10**6 + offset):
                    stow(client, mutant, stowed)
                rss = process.memory_info().rss / 2**20
                print(
                    f"round {number + 1}: {cstore.inputs + stowed.inputs} inputs, RSS {rss:.1f} MiB"
                )
                if number in (0, args.rounds - 1):
                    taken = len(list(snapshots.glob("*.pickle")))
                    os.kill(server.process.pid, signal.SIGUSR1)
                    while len(list(snapshots.glob("*.pickle"))) == taken:
                        time.sleep(0.5)
        finally:
            sender.close()
            client.close()
            server.stop()
        print(f"hangs {cstore.hangs + stowed.hangs}, crashes {cstore.crashes + stowed.crashes}")
        first, last = sorted(snapshots.glob("*.pickle"))
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            for snapshot in (first, last):
                shutil.copy(snapshot, args.keep / snapshot.name)
        subprocess.run([sys.executable, str(HERE / "diff.py"), str(first), str(last)], check=True)


if __name__ == "__main__":
    main()
