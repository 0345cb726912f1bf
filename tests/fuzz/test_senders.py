"""What the fuzzer's C-STORE sender counts as hung (bench/fuzzing/senders.py): no answer within
its timeout is a hang; a late answer is an answer, listed as slow with its latency; an
association the archive drops before the timeout is a crash. The archive is made late by
stopping its process (SIGSTOP), as a machine at a high load average does."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.fuzzing.mutate import Mutant, load_seed, mutate
from bench.fuzzing.outcomes import SLOW_ANSWER, Tally
from bench.fuzzing.senders import NETWORK_TIMEOUT, TIMEOUT, CStoreSender
from tests.servers import DATA, PacsServer

SEED = DATA / "edge-cases" / "CT_small.dcm"


@pytest.fixture(scope="module")
def mutant() -> Mutant:
    seed = load_seed(SEED)
    assert seed is not None
    return mutate(seed, 0, kind="length_zero")


def _send_while_stopped(
    server: PacsServer, mutant: Mutant, timeout: float, stopped: float
) -> Tally:
    """C-STORE *mutant* while the server's process is stopped for *stopped* seconds."""
    assert server.process is not None
    sender = CStoreSender(
        server.port, [(mutant.SOPClassUID, mutant.TransferSyntaxUID)], timeout=timeout
    )
    tally = Tally()
    sender.send(mutant, tally)  # associated, and the server answered once
    os.kill(server.process.pid, signal.SIGSTOP)
    resume = threading.Timer(stopped, os.kill, (server.process.pid, signal.SIGCONT))
    resume.start()
    try:
        late = Tally()
        sender.send(mutant, late)
    finally:
        resume.join()
        sender.close()
    return late


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PacsServer]:
    """Stopped and resumed by the tests (SIGSTOP, SIGCONT), never ended."""
    server = PacsServer(tmp_path_factory.mktemp("senders") / "home").start()
    yield server
    server.stop()


@pytest.fixture
def doomed(tmp_path: Path) -> Iterator[PacsServer]:
    """A server a test kills."""
    server = PacsServer(tmp_path / "home").start()
    yield server
    server.stop()


def test_the_hang_timeout_is_past_the_archives_network_timeout() -> None:
    assert TIMEOUT > NETWORK_TIMEOUT


def test_a_late_answer_is_slow_not_hung(server: PacsServer, mutant: Mutant) -> None:
    late = _send_while_stopped(server, mutant, timeout=SLOW_ANSWER + 10, stopped=SLOW_ANSWER + 1)
    assert (late.hangs, late.crashes, late.bugs) == (0, 0, [])
    assert sum(late.refused.values()) + late.accepted == 1
    assert late.latencies[0] > SLOW_ANSWER
    assert late.as_json()[f"slow_answers_over_{SLOW_ANSWER:g}_s"] == 1
    assert late.slow[0]["mutation"] == "length_zero"


def test_no_answer_within_the_timeout_is_a_hang(server: PacsServer, mutant: Mutant) -> None:
    late = _send_while_stopped(server, mutant, timeout=2, stopped=4)
    assert (late.hangs, late.crashes) == (1, 0)
    assert late.bugs[0]["kind"] == "no C-STORE response"
    assert late.latencies == []


def test_a_dropped_association_is_a_crash(doomed: PacsServer, mutant: Mutant) -> None:
    server = doomed
    assert server.process is not None
    sender = CStoreSender(server.port, [(mutant.SOPClassUID, mutant.TransferSyntaxUID)], timeout=30)
    sender.send(mutant, Tally())
    os.kill(server.process.pid, signal.SIGSTOP)
    threading.Timer(1, os.kill, (server.process.pid, signal.SIGKILL)).start()
    dropped = Tally()
    try:
        sender.send(mutant, dropped)
    finally:
        sender.close()
    assert (dropped.hangs, dropped.crashes) == (0, 1)
    assert dropped.bugs[0]["kind"] == "C-STORE aborted"
