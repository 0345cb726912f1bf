"""uvicorn's HTTP/1.1 protocol with deadlines on request headers and bodies (slow-loris
defence).

uvicorn bounds the time a kept-alive connection may sit idle between requests
(``timeout_keep_alive``), but not the time a client may take to send a request's headers: a
client trickling one header byte every few seconds held its connection (a socket, a file
descriptor, a protocol object) for as long as it liked, and a few thousand such clients exhaust
the process's file descriptors. Here every request's headers must be complete within
``header_timeout`` seconds of their first byte (of the connection, for the first request), or
the connection is closed. The same holds for a request body trickled in: while a body is
incomplete, every ``body_timeout`` seconds must bring at least ``BODY_BYTES_PER_WINDOW`` bytes
of it, or the connection is closed and the application reads a disconnect (a STOW-RS request
cut off so stores nothing). Time while the application itself is not reading (uvicorn's flow
control paused the socket) or the client awaits ``100 Continue`` does not count against the
client. Header size is bounded by h11 (``h11_max_incomplete_event_size``), request bodies by
``viewer_api.limits``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import Any, ClassVar

from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)

# What a request body must bring in every body_timeout window: ~34 bytes/s at the default 30 s,
# far below any real sender, far above a slow-loris trickle of a byte now and then.
BODY_BYTES_PER_WINDOW = 1024


class HeaderDeadlineProtocol(H11Protocol):
    """H11Protocol closing a connection whose request headers or body do not arrive in time.

    uvicorn instantiates the class itself: :meth:`with_timeouts` makes one with the
    deadlines configured.
    """

    header_timeout: ClassVar[float] = 10.0  # seconds a client has to send a request's headers
    body_timeout: ClassVar[float] = 30.0  # a window in which a body must bring some bytes

    @classmethod
    def with_timeouts(cls, header: float, body: float) -> type[HeaderDeadlineProtocol]:
        """This protocol with a *header* seconds deadline on request headers and *body*
        seconds windows on request bodies."""
        return type(cls.__name__, (cls,), {"header_timeout": header, "body_timeout": body})

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_deadline: asyncio.TimerHandle | None = None
        self._answered: object = None  # the last request cycle whose headers arrived
        self._body_deadline: asyncio.TimerHandle | None = None
        self._body_bytes = 0  # of the body in flight, in the current window

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        _no_delay(transport)
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._disarm_body()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._header_deadline is None and self._between_requests():
            self._arm()  # the first bytes of the next request on a kept-alive connection
        if self._body_deadline is not None:
            self._body_bytes += len(data)
        super().data_received(data)
        if self.cycle is not self._answered:  # a new request's headers are complete
            self._answered = self.cycle
            self._disarm()
            self._disarm_body()
            if self._body_pending():
                self._arm_body()
        elif self._body_deadline is not None and not self._body_pending():
            self._disarm_body()

    def _between_requests(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _arm(self) -> None:
        self._header_deadline = self.loop.call_later(self.header_timeout, self._expired)

    def _disarm(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _body_pending(self) -> bool:
        return self.cycle is not None and self.cycle.more_body and not self.cycle.disconnected

    def _arm_body(self) -> None:
        self._body_bytes = 0
        self._body_deadline = self.loop.call_later(self.body_timeout, self._body_window_ended)

    def _disarm_body(self) -> None:
        if self._body_deadline is not None:
            self._body_deadline.cancel()
            self._body_deadline = None

    def _body_window_ended(self) -> None:
        self._body_deadline = None
        if not self._body_pending() or self.transport.is_closing():
            return
        assert self.cycle is not None
        waiting_on_us = self.flow.read_paused or self.cycle.waiting_for_100_continue
        if self._body_bytes < BODY_BYTES_PER_WINDOW and not waiting_on_us:
            client = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
            log.info(
                "closing %s: request body brought %d bytes in %g s",
                client,
                self._body_bytes,
                self.body_timeout,
            )
            self.transport.close()
            return
        self._arm_body()

    def _expired(self) -> None:
        self._header_deadline = None
        if self.cycle is self._answered and not self.transport.is_closing():
            client = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
            log.info(
                "closing %s: request headers incomplete after %g s", client, self.header_timeout
            )
            self.transport.close()


def _no_delay(transport: asyncio.Transport) -> None:
    """TCP_NODELAY on the connection. asyncio sets it only on sockets made with protocol
    IPPROTO_TCP, and uvicorn's listening socket (and ours, shared by several processes) is made
    with protocol 0, as are the connections accepted from it: responses went out under Nagle's
    algorithm, a response's second write (its body after its head) held back until the client
    acknowledged the first."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
