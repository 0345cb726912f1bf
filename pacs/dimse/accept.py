"""One listening socket for every receiver process, taken from by the least busy first.

With ``PACS_RECEIVERS`` > 1 the receivers used to bind the port each (SO_REUSEPORT), and
the kernel spread connections over them by a hash of the peer's address and port: four
modalities sending at once landed 2-2 only three times in eight, 4-0 once in eight (measured:
one receiver with every association while the other idled). Now ``pacs serve`` binds each
port once, before it starts the receivers, and they all accept from that one socket. Every
waiting receiver is woken by a new connection; each waits a moment in proportion to the
associations it already has (``ACCEPT_DELAY`` each) before it tries, so the least busy one
takes it, and the others find nothing left to accept (the socket does not block) and go back to
waiting. A receiver that is stuck cannot hold connections back: the others take them. With
one receiver nothing waits.

SO_REUSEPORT stays on the shared socket: a restarted ``pacs serve`` can bind the port while an
orphaned receiver of the killed one still holds it (it ends within a second, ``pacs.cli.serve``).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

# How long a receiver waits per association it has before it accepts a new connection: long
# enough that one with fewer associations, woken at the same moment, gets there first even
# when it has to wait for the GIL twice (5 ms switch interval: at 5 ms per association the
# pacs serve parent, with the API and sweeper threads, lost 1 turn in 6 a few times), short
# beside association set-up (~50 ms).
ACCEPT_DELAY = 0.012
# A receiver never waits longer than this, however busy.
MAX_ACCEPT_DELAY = 0.06
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


class AcceptTurn:
    """When a receiver sharing a listening socket tries to accept: after ``ACCEPT_DELAY``
    per association it holds or is still starting (accepted, its thread not yet running)."""

    def __init__(self, associations: Callable[[], int]) -> None:
        self._associations = associations
        self._starting = 0
        self._lock = threading.Lock()

    def load(self) -> int:
        return self._associations() + self._starting

    def wait(self) -> None:
        """Before accept(): give less busy receivers their chance first."""
        load = self.load()
        if load:
            time.sleep(min(MAX_ACCEPT_DELAY, ACCEPT_DELAY * load))

    def started(self) -> None:
        """A connection was accepted: it counts until :meth:`running`."""
        with self._lock:
            self._starting += 1

    def running(self) -> None:
        """Its association thread runs (or it ended before it had one)."""
        with self._lock:
            self._starting -= 1
