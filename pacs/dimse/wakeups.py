"""Event-driven wake-ups for the two threads pynetdicom runs per association.

pynetdicom polls: its DUL thread sleeps between looks at the socket and at the queue of PDUs
to send (1 ms by default), and its association thread sleeps 1 ms between looks for a decoded
DIMSE message. On one association that latency is paid several times per instance (request
decoded -> handler -> response sent): with an empty C-STORE handler, ~250 inst/s polling
against ~370 inst/s woken (bench/README.md). Here, for the associations our server accepts,
each of those sleeps becomes a wait that ends as soon as there is something to do:

- the DUL thread waits in ``select()`` on its socket and on a pipe written whenever another
  thread queues a primitive or an event for it;
- the association thread waits on an event set whenever a DIMSE message or an ACSE primitive
  (release, abort) is queued for it, or another thread asks it to pause (as pynetdicom's
  ``send_c_*`` methods do before sending on the association).

Timers (ARTIM, the network idle timeout) and a kill from another thread are noticed within
:data:`MAX_WAIT`. pynetdicom's own code runs unchanged: only ``time.sleep`` as seen by its
``dul`` and ``association`` modules is replaced, and only the two reactor loops of an attached
association wait differently; every other sleep (and every association we did not attach)
sleeps as before.

The DUL thread's wait is also where another thread can take the association's socket for a
while (:func:`socket_held`): the reactor parks there, reading and writing nothing, until that
thread gives the socket back (``pacs.dimse.direct`` sends C-STOREs so). Written against
pynetdicom 3.0 (the pinned version); ``tests/pacs/test_dimse_wakeups.py`` checks the two loops
are still where this expects them.
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
import threading
import time
import types
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from pynetdicom import association as _association
from pynetdicom import dul as _dul
from pynetdicom import evt

#: Longest a woken reactor waits before looking again anyway (timers, kills).
MAX_WAIT = 0.05

_sleep = time.sleep
#: The loops whose sleeps become waits.
REACTOR_LOOPS = (
    _association.Association._run_reactor.__code__,
    _dul.DULServiceProvider.run_reactor.__code__,
)


def _reactor_sleep(seconds: float) -> None:
    wait = getattr(threading.current_thread(), "_pacs_wait", None)
    if wait is not None and sys._getframe(1).f_code in REACTOR_LOOPS:
        wait()
    else:
        _sleep(seconds)


def install() -> None:
    """Give pynetdicom's ``dul`` and ``association`` modules a ``time`` whose ``sleep`` waits
    in the reactor loops of attached associations (idempotent)."""
    for module in (_association, _dul):
        if getattr(module.time, "sleep", None) is not _reactor_sleep:
            clock = types.ModuleType("time")
            clock.__dict__.update(time.__dict__)
            clock.sleep = _reactor_sleep  # type: ignore[attr-defined]
            module.time = clock  # type: ignore[attr-defined]


def attach(assoc: Any) -> None:
    """Wake *assoc*'s two reactors on events instead of polling: an acceptor's before it
    starts, a requestor's once established (its reactors poll until then). The DUL's wake-up
    pipe is released when the connection closes."""
    install()
    woken = threading.Event()

    def association_wait() -> None:
        woken.wait(MAX_WAIT)
        woken.clear()  # before the loop looks at its queues: a later put wakes the next wait

    assoc._pacs_wait = association_wait
    # Another thread pausing the reactor (send_c_store() and friends clear the checkpoint,
    # then spin until the reactor says it paused, which it does after its sleep) wakes it.
    checkpoint = _WakingEvent(woken.set)
    if assoc._reactor_checkpoint.is_set():
        checkpoint.set()
    assoc._reactor_checkpoint = checkpoint
    _wake_on_put(assoc.dimse.msg_queue, woken.set, assoc)
    _wake_on_put(assoc.dul.to_user_queue, woken.set, assoc)

    dul = assoc.dul
    pipe = _Pipe()
    hold = _Hold(pipe.wake)
    assoc._pacs_hold = hold

    def dul_wait() -> None:
        if hold.park_if_wanted():
            return
        sock = dul.socket.socket if dul.socket is not None else None
        if sock is None or sock.fileno() < 0 or pipe.closed:
            _sleep(0.001)  # no connection to wait on: pynetdicom's own pace
            return
        if getattr(sock, "pending", lambda: 0)():  # TLS: decrypted bytes select() cannot see
            return
        with contextlib.suppress(OSError, ValueError):  # closed meanwhile: the loop notices
            ready, _, _ = select.select([sock, pipe.read_end], [], [], MAX_WAIT)
            if pipe.read_end in ready:
                pipe.drain()

    dul._pacs_wait = dul_wait
    _wake_on_put(dul.to_provider_queue, pipe.wake, dul)
    _wake_on_put(dul.event_queue, pipe.wake, dul)
    assoc._pacs_close = pipe.close
    assoc.bind(evt.EVT_CONN_CLOSE, on_closed)
    weakref.finalize(assoc, pipe.close)  # backstop: on_closed() is the normal end


@contextlib.contextmanager
def socket_held(assoc: Any, timeout: float) -> Iterator[Any]:
    """Have *assoc*'s socket to the calling thread alone: its DUL reactor parks in its wait
    (between PDUs, its queues empty) until the block ends. Yields the socket.

    While held, pynetdicom sees no PDU and sends none, and its state machine stays where it
    was (Sta6 for an established association); what the holder leaves unread in the socket
    (an A-ABORT, an A-RELEASE-RQ) the reactor reads once it runs again.

    Raises
    ------
    ConnectionError
        *assoc* was not attached, or its reactor did not park within *timeout* (it stopped:
        the connection is closed).
    """
    hold: _Hold | None = getattr(assoc, "_pacs_hold", None)
    if hold is None:
        raise ConnectionError("association without wake-ups: its socket cannot be held")
    hold.take(timeout, assoc.dul.is_alive)
    try:
        yield assoc.dul.socket.socket
    finally:
        hold.give_back()


class _Hold:
    """The hand-over of a DUL's socket between its reactor and one other thread."""

    def __init__(self, wake: Callable[[], None]) -> None:
        self._changed = threading.Condition()
        self._wanted = False
        self._parked = False
        self._wake = wake

    def park_if_wanted(self) -> bool:
        """In the reactor's wait: park while another thread holds the socket."""
        with self._changed:
            if not self._wanted:
                return False
            self._parked = True
            self._changed.notify_all()
            self._changed.wait_for(lambda: not self._wanted)
            self._parked = False
            return True

    def take(self, timeout: float, alive: Callable[[], bool]) -> None:
        with self._changed:
            if self._wanted:
                raise RuntimeError("the socket is already held")
            self._wanted = True
        self._wake()
        deadline = time.monotonic() + timeout
        with self._changed:
            while not self._parked:
                left = deadline - time.monotonic()
                if left <= 0 or not alive():
                    self._wanted = False
                    raise ConnectionError("the association's reactor stopped (connection closed)")
                self._changed.wait(min(left, MAX_WAIT))

    def give_back(self) -> None:
        with self._changed:
            self._wanted = False
            self._changed.notify_all()


def on_closed(event: Any) -> None:
    """EVT_CONN_CLOSE: release the association's wake-up pipe."""
    close = getattr(event.assoc, "_pacs_close", None)
    if close is not None:
        close()


class _WakingEvent(threading.Event):
    """An event whose clear() calls *wake*."""

    def __init__(self, wake: Callable[[], None]) -> None:
        super().__init__()
        self._wake = wake

    def clear(self) -> None:
        super().clear()
        self._wake()


class _Pipe:
    """A self-pipe that wakes a select(); writes after close() are dropped, never sent to
    a descriptor number the kernel has since given to another file."""

    def __init__(self) -> None:
        self.read_end, self._write_end = os.pipe()
        os.set_blocking(self.read_end, False)
        os.set_blocking(self._write_end, False)
        self._lock = threading.Lock()
        self.closed = False

    def wake(self) -> None:
        with self._lock:
            if not self.closed:
                with contextlib.suppress(BlockingIOError):  # full: a wake-up is pending
                    os.write(self._write_end, b"\0")

    def drain(self) -> None:
        with self._lock:
            if not self.closed:
                with contextlib.suppress(BlockingIOError):
                    while os.read(self.read_end, 512):
                        pass

    def close(self) -> None:
        with self._lock:
            if not self.closed:
                self.closed = True
                os.close(self.read_end)
                os.close(self._write_end)


def _wake_on_put(queue: Any, wake: Callable[[], None], owner: threading.Thread) -> None:
    """Make *queue*.put() call *wake* when a thread other than *owner* puts."""
    put = queue.put

    def put_and_wake(item: Any, block: bool = True, timeout: float | None = None) -> None:
        put(item, block, timeout)
        if threading.current_thread() is not owner:
            wake()

    queue.put = put_and_wake
