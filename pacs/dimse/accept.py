"""One listening socket for every receiver process, taken from by the least busy first.

With ``PACS_RECEIVERS`` > 1 the receivers used to bind the port each (SO_REUSEPORT), and
the kernel spread connections over them by a hash of the peer's address and port: four
modalities sending at once landed 2-2 only three times in eight, 4-0 once in eight (measured:
one receiver with every association while the other idled). Now ``pacs serve`` binds each
port once, before it starts the receivers, and they all accept from that one socket. Every
waiting receiver is woken by a new connection.

Each receiver publishes how many associations it holds or is starting (:class:`Loads`, memory
all of them see: accepted, open, not yet closed). A woken receiver that holds more than another
one leaves the connection to it: it looks again every ``TURN_POLL`` while the connection is
still waiting, and takes it itself after ``MAX_ACCEPT_DELAY``, so that a receiver that is stuck
cannot hold connections back. The others find nothing left to accept (the socket does not
block) and go back to waiting. Between receivers that hold as many, the one that accepted
longest ago goes first, so that associations opened one after another (a modality sending
study after study) take turns too: otherwise the receiver the kernel happens to run first
after a wake-up can take every one of them (seen in CI: 40 in a row to one process).
No receiver leaves a connection to one whose accept loop has not run for ``STALE`` (it is
stuck, or starved of CPU): that one would only make every connection wait the longest.
(Before, each receiver waited 12 ms per association it held
before it tried: that split four storescu associations 3-1 in every profiled run of the ingest
benchmark, the receiver busy setting up its first association losing each race.)

SO_REUSEPORT stays on the shared socket: a restarted ``pacs serve`` can bind the port while an
orphaned receiver of the killed one still holds it (it ends within a second, ``pacs.cli.serve``).
"""

from __future__ import annotations

import multiprocessing
import select
import socket
import threading
import time

# A receiver leaves a connection to a less busy one at most this long (short beside an
# association's set-up, ~50 ms).
MAX_ACCEPT_DELAY = 0.06
# How often a receiver that leaves a connection to a less busy one looks whether it is taken.
TURN_POLL = 0.002
# A receiver whose accept loop has not run for this long (seconds) is not left connections:
# the loop runs at least every 0.5 s (socketserver's poll interval).
STALE = 2.0
BACKLOG = 128


def listening_socket(host: str, port: int) -> socket.socket:
    """A bound, listening, non-blocking TCP socket on *host*:*port*, to share with the
    receiver processes (multiprocessing passes it to each)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if hasattr(socket, "SO_REUSEPORT"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class Loads:
    """The associations each receiver process holds or is starting, in memory all of them
    see (slot 0 is ``pacs serve``'s own, slot *n* child ``receiver-n``'s). A slot whose
    receiver is not accepting (not started yet, stopped) reads ``ABSENT``: no receiver leaves
    a connection to it."""

    ABSENT = 2**31 - 1

    def __init__(self, processes: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.counts = context.RawArray("i", [self.ABSENT] * processes)
        # When each last accepted a connection (CLOCK_MONOTONIC, ns: the same clock in
        # every process), to break ties.
        self.accepted = context.RawArray("q", processes)
        # When each receiver's accept loop last ran (the same clock).
        self.alive = context.RawArray("q", processes)

    def defers(self, slot: int) -> bool:
        """Whether receiver *slot* should leave a waiting connection to another one: one
        that holds fewer, or as many and accepted its last longer ago. (Read without a lock:
        a stale read costs at most one connection taken out of turn.)"""
        counts, accepted, alive = self.counts, self.accepted, self.alive
        mine = counts[slot]
        since = time.monotonic_ns() - int(STALE * 1e9)
        return any(
            load < mine or (load == mine and accepted[other] < accepted[slot])
            for other, load in enumerate(counts)
            if other != slot and alive[other] >= since
        )


class AcceptTurn:
    """When a receiver sharing a listening socket tries to accept (see the module), and how
    many connections it holds: from accept() until the association's connection closes
    (EVT_CONN_CLOSE, or its thread ends), or until it turns out none was made of it (a
    failed TLS handshake)."""

    def __init__(self, loads: Loads, slot: int = 0) -> None:
        self._lock = threading.Lock()
        self._starting: set[object] = set()  # accepted sockets without an association yet
        self._open: set[object] = set()  # their associations, until closed
        self._loads = loads
        self._slot = slot
        self.publish()  # a receiver restarted in this slot starts with none

    def load(self) -> int:
        with self._lock:
            return len(self._starting) + len(self._open)

    def publish(self) -> None:
        """Tell the other receivers this one's load, and that it is alive."""
        self._loads.counts[self._slot] = self.load()
        self.heartbeat()

    def heartbeat(self) -> None:
        """Tell the other receivers this one's accept loop runs."""
        self._loads.alive[self._slot] = time.monotonic_ns()

    def wait(self, sock: socket.socket) -> None:
        """Before accept() on *sock*: give less busy receivers their chance first."""
        self.publish()
        deadline = time.monotonic() + MAX_ACCEPT_DELAY
        while self._loads.defers(self._slot) and time.monotonic() < deadline:
            if not select.select([sock], [], [], 0)[0]:
                return  # taken: accept() finds nothing and the server waits again
            time.sleep(TURN_POLL)
            self.publish()

    def started(self, connection: object) -> None:
        """*connection* was accepted."""
        with self._lock:
            self._starting.add(connection)
        self._loads.accepted[self._slot] = time.monotonic_ns()
        self.publish()

    def opened(self, connection: object, assoc: object) -> None:
        """*connection* became *assoc*."""
        with self._lock:
            self._starting.discard(connection)
            self._open.add(assoc)
        self.publish()

    def settled(self, connection: object) -> None:
        """*connection* has its association, or never will (its handler is done)."""
        with self._lock:
            self._starting.discard(connection)
        self.publish()

    def closed(self, assoc: object) -> None:
        """*assoc*'s connection closed (EVT_CONN_CLOSE), or its thread ended."""
        with self._lock:
            self._open.discard(assoc)
        self.publish()

    def leave(self) -> None:
        """This receiver accepts no more (its server shuts down)."""
        self._loads.counts[self._slot] = Loads.ABSENT
