"""Background loops (job worker, stability sweeper, webhook dispatcher) through outages.

A loop that fails a round (the index or the blob store is down) keeps running: it waits twice
as long after each failed round, from its own interval up to ``MAX_BACKOFF``, and logs one line
when an outage starts and one when it ends, not a traceback per round.
"""

from __future__ import annotations

import logging
import time

from pacs.errors import ArchiveError

MAX_BACKOFF = 30.0  # seconds between tries, at most, while an outage lasts
_MAX_DOUBLINGS = 30


class Outage:
    """The back-off and log state of one loop; *what* names the loop in the log."""

    def __init__(
        self, what: str, log: logging.Logger, interval: float, max_backoff: float = MAX_BACKOFF
    ) -> None:
        self.what, self.log = what, log
        self.interval, self.max_backoff = interval, max(max_backoff, interval)
        self.failures = 0
        self._since = 0.0

    def failed(self, exc: Exception) -> float:
        """Record a failed round; return how long to wait before the next one."""
        if self.failures == 0:
            self._since = time.monotonic()
            # An archive error is an outage; anything else is a bug worth its traceback (once).
            self.log.warning(
                "%s failing, retrying with back-off: %s: %s",
                self.what,
                type(exc).__name__,
                exc,
                exc_info=not isinstance(exc, ArchiveError),
            )
        self.failures += 1
        # The exponent is capped: 2.0 ** 1024 overflows, which after a day-long outage would
        # end the very loop this keeps alive.
        doublings = min(self.failures - 1, _MAX_DOUBLINGS)
        return float(min(self.interval * 2.0**doublings, self.max_backoff))

    def succeeded(self) -> None:
        """Record a good round: ends the outage (one line) if there was one."""
        if self.failures:
            self.log.info(
                "%s working again after %.1f s (%d failed round%s)",
                self.what,
                time.monotonic() - self._since,
                self.failures,
                "" if self.failures == 1 else "s",
            )
            self.failures = 0
