"""A fuzzing campaign: mutants of every real file through the ingest path in process, and
through C-STORE and STOW-RS to a running ``pacs serve``; then the archive must still serve,
hold steady memory and pass ``pacs fsck``. Shared by ``bench/fuzz.py`` and ``tests/fuzz``."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import threading
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from bench.fuzzing.mutate import Mutant, Seed, load_seed, mutate
from bench.fuzzing.outcomes import Tally, store_in_process
from bench.fuzzing.senders import (
    HANG_MARGIN,
    NETWORK_TIMEOUT,
    CStoreSender,
    count_response,
    multipart,
    stow,
)
from pacs.index import Database, upgrade
from pacs.index.queries import counts
from pacs.ingest import Archive
from pacs.storage import open_store
from tests.servers import PacsServer


@dataclass
class Corpus:
    """The real files mutated, and those the archive refuses even unmutated (sent as they
    are, through STOW-RS)."""

    seeds: list[Path] = field(default_factory=list)
    unmutable: list[Path] = field(default_factory=list)
    contexts: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def of(cls, files: list[Path]) -> Corpus:
        corpus = cls()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for path in files:
                seed = load_seed(path)
                if seed is None:
                    corpus.unmutable.append(path)
                    continue
                corpus.seeds.append(path)
                corpus.contexts.append((seed.SOPClassUID, seed.transfer_syntax_uid))
        return corpus

    def mutants(self, count: int, offset: int = 0) -> Iterator[Mutant]:
        """*count* mutants, spread evenly over the seeds (each seed read once)."""
        n = len(self.seeds)
        for index, path in enumerate(self.seeds):
            share = count // n + (1 if index < count % n else 0)
            if share == 0:
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                seed: Seed | None = load_seed(path)
            assert seed is not None
            for number in range(share):
                yield mutate(seed, offset + number)


def in_process(corpus: Corpus, count: int, home: Path) -> dict[str, Tally]:
    """Archive.store() on mutants as C-STORE data sets and as STOW-RS parts."""
    db = Database(f"sqlite:///{home / 'index.db'}")
    upgrade(db)
    archive = Archive(db, open_store(f"file://{home / 'storage'}"))
    tallies = {"dimse": Tally(), "stow": Tally()}
    try:
        with _quiet():
            for i, mutant in enumerate(corpus.mutants(count)):
                as_dimse = i % 2 == 0
                store_in_process(
                    archive, mutant, tallies["dimse" if as_dimse else "stow"], as_dimse
                )
                _progress("in-process", i)
    finally:
        db.dispose()
    return tallies


@dataclass
class ServerRun:
    """What a run against a server found."""

    cstore: Tally
    stow: Tally
    echo_ok: bool
    alive: bool
    rss_mb: list[tuple[int, float]]  # (inputs sent by then, both interfaces; RSS in MiB)
    log_errors: list[str]  # the server log's ERROR lines (tracebacks' first lines)
    fsck: dict[str, Any]
    indexed: int
    seconds: float

    def as_json(self) -> dict[str, Any]:
        return {
            "c_store": self.cstore.as_json(),
            "stow_rs": self.stow.as_json(),
            "c_echo_after": self.echo_ok,
            "server_alive_after": self.alive,
            "server_rss_mb": {
                "before": self.rss_mb[0][1],
                "after": self.rss_mb[-1][1],
                "max": max(rss for _, rss in self.rss_mb),
                "samples": [rss for _, rss in self.rss_mb],
                "sampled_at_inputs": [sent for sent, _ in self.rss_mb],
            },
            "server_log_errors_by_logger": dict(
                sorted(Counter(line.split()[3].rstrip(":") for line in self.log_errors).items())
            ),
            "server_log_error_lines": [
                line for line in self.log_errors if " ERROR pydicom " not in line
            ][:20],
            "fsck": self.fsck,
            "instances_indexed_by_the_run": self.indexed,
            "seconds": round(self.seconds, 1),
        }

    @property
    def ok(self) -> bool:
        return bool(
            self.cstore.ok
            and self.stow.ok
            and self.echo_ok
            and self.alive
            and self.fsck.get("consistent")
            and self.indexed <= self.cstore.accepted + self.stow.accepted
        )


def against_server(
    corpus: Corpus, server: PacsServer, count: int, samples: int = 10, concurrent: bool = True
) -> ServerRun:
    """*count* mutants by C-STORE and *count* by STOW-RS (two clients at once when
    *concurrent*), the unmutable files once by STOW-RS; RSS sampled *samples* times per
    interface. A C-STORE hangs when the server's own network timeout (``PACS_NETWORK_TIMEOUT``)
    and ``HANG_MARGIN`` pass without an answer."""
    assert server.process is not None
    process = psutil.Process(server.process.pid)
    network_timeout = float(server.env.get("PACS_NETWORK_TIMEOUT", NETWORK_TIMEOUT))
    sender = CStoreSender(server.port, corpus.contexts, timeout=network_timeout + HANG_MARGIN)
    client = server.client("modality")
    reader = server.client("admin", facilities=("*",))
    cstore, stowed = Tally(), Tally()
    rss: list[tuple[int, float]] = []
    every = max(1, count // samples)
    lock = threading.Lock()

    def measure() -> None:
        rss.append((cstore.inputs + stowed.inputs, round(process.memory_info().rss / 2**20, 1)))

    def sample(i: int) -> None:
        if i % every == 0:
            with lock:
                measure()

    def run_cstore() -> None:
        for i, mutant in enumerate(corpus.mutants(count)):
            sender.send(mutant, cstore)
            sample(i)
            _progress("C-STORE", i)

    def run_stow() -> None:
        for i, mutant in enumerate(corpus.mutants(count, offset=1_000_000)):
            stow(client, mutant, stowed, reader)
            sample(i)
            _progress("STOW-RS", i)
        for path in corpus.unmutable:
            body, content_type = multipart([path.read_bytes()])
            stowed.inputs += 1
            stowed.by_mutation["unmutated"] += 1
            count_response(client, body, content_type, stowed, None, "/dicom-web/studies", False)

    indexed_before = _indexed(server)
    start = time.monotonic()
    sample(0)
    try:
        if concurrent:
            thread = threading.Thread(target=run_cstore, name="fuzz-cstore")
            thread.start()
            run_stow()
            thread.join()
        else:
            run_cstore()
            run_stow()
        seconds = time.monotonic() - start
        measure()
        echo_ok = sender.echo()
    finally:
        sender.close()
        client.close()
        reader.close()
    alive = server.process.poll() is None
    checked = server.pacs("fsck", "--json", "--grace", "0", check=False)
    try:
        fsck = json.loads(checked.stdout) | {"exit_code": checked.returncode}
    except ValueError:
        fsck = {"consistent": False, "exit_code": checked.returncode, "output": checked.stdout}
    indexed = _indexed(server) - indexed_before
    log_errors = [
        line
        for line in server.log.read_text(errors="replace").splitlines()
        if " ERROR " in line or " CRITICAL " in line
    ]
    return ServerRun(cstore, stowed, echo_ok, alive, rss, log_errors, fsck, indexed, seconds)


def _indexed(server: PacsServer) -> int:
    """Instances in the server's (SQLite) index."""
    db = Database(f"sqlite:///{server.home / 'index.db'}")
    try:
        with db.read() as conn:
            return counts(conn).instances
    finally:
        db.dispose()


def _progress(what: str, i: int) -> None:
    if i and i % 1000 == 0:
        print(f"{time.strftime('%H:%M:%S')} {what}: {i} inputs", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The ingest path logs each refusal: thousands of warnings say nothing here."""
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(logging.NOTSET)
