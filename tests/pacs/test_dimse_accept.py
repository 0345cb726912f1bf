"""pacs.dimse.accept: receivers sharing one listening socket take connections in turns, by
the loads they publish."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from pacs.dimse import accept
from pacs.dimse.accept import AcceptTurn, Loads, listening_socket


def _waited(turn: AcceptTurn, sock: socket.socket, took: list[float]) -> threading.Thread:
    def wait() -> None:
        began = time.monotonic()
        turn.wait(sock)
        took.append(time.monotonic() - began)

    thread = threading.Thread(target=wait)
    thread.start()
    return thread


@pytest.fixture
def listening() -> Iterator[socket.socket]:
    sock = listening_socket("127.0.0.1", 0)
    yield sock
    sock.close()


def test_a_busier_receiver_leaves_a_connection_to_a_less_busy_one(
    listening: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(accept, "MAX_ACCEPT_DELAY", 10.0)
    loads = Loads(2)
    busy = _holding(2, loads, 0)
    idle = _holding(0, loads, 1)
    assert list(loads.counts) == [2, 0]
    with socket.create_connection(listening.getsockname()):
        took: list[float] = []
        waiting = _waited(busy, listening, took)
        time.sleep(0.3)
        assert waiting.is_alive()  # still leaving it to the idle receiver
        idle.wait(listening)  # the least busy: no wait
        connection, _ = listening.accept()
        idle.started(connection)
        waiting.join(5)
        connection.close()
    assert 0.3 <= took[0] < 5  # it went back to waiting once the connection was taken
    assert list(loads.counts) == [2, 1]


def test_a_busier_receiver_takes_a_connection_nobody_else_does(
    listening: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(accept, "MAX_ACCEPT_DELAY", 0.3)
    loads = Loads(2)
    busy = _holding(3, loads, 0)
    _holding(0, loads, 1)  # stuck: never accepts
    with socket.create_connection(listening.getsockname()):
        took: list[float] = []
        _waited(busy, listening, took).join(5)
        connection, _ = listening.accept()
        connection.close()
    assert 0.3 <= took[0] < 5


def test_receivers_holding_as_many_take_connections_in_turn(
    listening: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Connections opened one after another, each closed before the next, alternate."""
    monkeypatch.setattr(accept, "MAX_ACCEPT_DELAY", 10.0)
    loads = Loads(2)
    turns = [AcceptTurn(loads, 0), AcceptTurn(loads, 1)]
    turns[0].started("an earlier connection")  # receiver 0 took the last one
    turns[0].settled("an earlier connection")
    taken: list[int] = []
    for _ in range(4):
        with socket.create_connection(listening.getsockname()):
            took: list[float] = []
            # Both are woken; whichever the kernel runs first, the one whose turn it is takes it.
            waiting = [_waited(turn, listening, took) for turn in turns]
            deadline = time.monotonic() + 5
            while all(thread.is_alive() for thread in waiting) and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(0.05)  # had the other one not left it, it would be done by now too
            (slot,) = [number for number, thread in enumerate(waiting) if not thread.is_alive()]
            connection, _ = listening.accept()
            turns[slot].started(connection)
            for thread in waiting:
                thread.join(5)
            turns[slot].settled(connection)  # never became an association: load 0 again
            connection.close()
        taken.append(slot)
    assert list(loads.counts) == [0, 0]
    assert taken == [1, 0, 1, 0]


def test_a_receiver_whose_accept_loop_stopped_is_not_left_connections(
    listening: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(accept, "MAX_ACCEPT_DELAY", 10.0)
    loads = Loads(2)
    turn = AcceptTurn(loads, 0)
    turn.started("an earlier connection")  # its turn would be the other's...
    turn.settled("an earlier connection")
    AcceptTurn(loads, 1)
    assert loads.defers(0)
    loads.alive[1] -= int((accept.STALE + 1) * 1e9)  # ...whose loop has not run since
    assert not loads.defers(0)
    with socket.create_connection(listening.getsockname()):
        began = time.monotonic()
        turn.wait(listening)
        assert time.monotonic() - began < 1


def test_loads_count_connections_until_they_close() -> None:
    loads = Loads(3)
    turn = AcceptTurn(loads, 2)
    assert list(loads.counts) == [Loads.ABSENT, Loads.ABSENT, 0]  # only slot 2 is up
    turn.started("socket a")
    turn.started("socket b")
    assert loads.counts[2] == 2
    turn.opened("socket a", "association a")
    turn.settled("socket a")  # its handler is done: the association counts
    turn.settled("socket b")  # no association was made of it (a failed TLS handshake)
    assert loads.counts[2] == 1
    turn.closed("association a")  # EVT_CONN_CLOSE
    turn.closed("association a")  # its thread ends
    assert loads.counts[2] == 0
    turn.leave()
    assert loads.counts[2] == Loads.ABSENT


def _holding(count: int, loads: Loads, slot: int) -> AcceptTurn:
    turn = AcceptTurn(loads, slot)
    for number in range(count):
        turn.started(f"socket {number}")
        turn.opened(f"socket {number}", f"association {number}")
    return turn
