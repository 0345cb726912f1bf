"""uvicorn's HTTP/1.1 protocol with a deadline on request headers (slow-loris defence).

uvicorn bounds the time a kept-alive connection may sit idle between requests
(``timeout_keep_alive``), but not the time a client may take to send a request's headers: a
client trickling one header byte every few seconds held its connection (a socket, a file
descriptor, a protocol object) for as long as it liked, and a few thousand such clients exhaust
the process's file descriptors. Here every request's headers must be complete within
``header_timeout`` seconds of their first byte (of the connection, for the first request), or
the connection is closed. Header size is bounded by h11 (``h11_max_incomplete_event_size``),
request bodies by ``viewer_api.limits``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, ClassVar

from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)


class HeaderDeadlineProtocol(H11Protocol):
    """H11Protocol closing a connection whose request headers are not complete in time.

    uvicorn instantiates the class itself: :meth:`with_header_timeout` makes one with the
    deadline configured.
    """

    header_timeout: ClassVar[float] = 10.0  # seconds a client has to send a request's headers

    @classmethod
    def with_header_timeout(cls, seconds: float) -> type[HeaderDeadlineProtocol]:
        """This protocol with a *seconds* deadline on request headers."""
        return type(cls.__name__, (cls,), {"header_timeout": seconds})

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_deadline: asyncio.TimerHandle | None = None
        self._answered: object = None  # the last request cycle whose headers arrived

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._header_deadline is None and self._between_requests():
            self._arm()  # the first bytes of the next request on a kept-alive connection
        super().data_received(data)
        if self.cycle is not self._answered:  # a new request's headers are complete
            self._answered = self.cycle
            self._disarm()

    def _between_requests(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _arm(self) -> None:
        self._header_deadline = self.loop.call_later(self.header_timeout, self._expired)

    def _disarm(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _expired(self) -> None:
        self._header_deadline = None
        if self.cycle is self._answered and not self.transport.is_closing():
            client = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
            log.info(
                "closing %s: request headers incomplete after %g s", client, self.header_timeout
            )
            self.transport.close()
