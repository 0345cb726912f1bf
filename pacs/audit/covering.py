"""Successful frame reads and stores audited per series and party: one event before (or with)
the first, one summary.

A viewer opening a 300-slice series asks for each frame on its own: one audit event committed
per frame request cost more than the rest of the request (~1.1 of ~2.7 ms of CPU). Here the
first frame read of a series by a reader (same subject, token, roles, facility and address) is
recorded and committed before its data goes out, as every read is; the reader's further frame
reads of that series in the next ``window`` seconds are covered by it: counted in memory, and
written as one summary event (which instances, how many requests, first and last) when the
window closes (checked every second) or the archive's API stops, stamped when it is written.
A crash loses at most the summaries of open windows; who read which series, from where and
when is on disk before any frame of it is answered. Failed reads are never covered: each is
its own event; nor is anything while the trail cannot be written (each read then waits for its
own event and is refused without it). dcm4chee's audit aggregation does the same; ``window`` 0
records every frame request on its own. Each HTTP process keeps its own windows: a browser's
connections spread over N processes make up to N covering events and N summaries.

Stores of new instances sent over DICOM or STOW-RS are covered the same way per series and
sender (calling AE title or token, address, protocol, facility), in each process that receives
them (:class:`pacs.ingest.Archive`): the first store of a series is audited in the transaction
that indexes it, as every store was; the sender's next stores of that series in the window are
counted and summed up in one event, as DICOM's "DICOM Instances Transferred" audit message
(PS3.15 A.5.3.3) counts a transfer's instances. A crash loses at most the summaries of open
windows, and nothing of who stored what: each instance's index row keeps its protocol, calling
AE title, address and time (a STOW-RS sender's user is in the covering event). Duplicates,
replacements and refusals are never covered.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from pacs.audit.model import AuditEvent

log = logging.getLogger(__name__)

# Instances a summary lists by UID at most (it counts them all): a 3000-frame series' UIDs
# would make one event of ~200 kB.
MAX_LISTED = 1000
# Seconds between the flusher's looks for windows that have closed.
FLUSH_EVERY = 1.0

_Key = tuple[object, ...]


@dataclass
class _Window:
    """The frame reads a covering event stands for."""

    covering: AuditEvent
    opened: float  # monotonic seconds
    requests: int = 0
    instances: set[str] = field(default_factory=set)
    first: datetime | None = None
    last: datetime | None = None

    def summary(self) -> AuditEvent:
        """The summary event, stamped now (when it is written: an export of a period already
        past would miss it otherwise); when the reads were is in its detail."""
        listed = sorted(self.instances)
        covering = {k: v for k, v in self.covering.detail.items() if k != "query"}
        detail = {
            **covering,  # method, route, status; a query string may differ between reads
            "covered_by_event_at": self.covering.at.isoformat(),
            "requests": self.requests,
            "instances": len(listed),
            "first": self.first.isoformat() if self.first else None,
            "last": self.last.isoformat() if self.last else None,
            "sop_instance_uids": listed[:MAX_LISTED],
        }
        at = datetime.now(UTC)
        return replace(self.covering, at=at, SOPInstanceUID=None, detail=detail)


class CoveredEvents:
    """Successful frame reads or stores, covered per series and party (see module).

    *record* commits one event (returning when it is committed, raising when it is not): the
    archive's :meth:`pacs.audit.GroupCommit.record`. A thread started with the first window
    writes the summaries of closed ones every *flush_every* seconds. While the trail cannot
    be written (a commit failed, and none succeeded since) nothing is covered: every frame
    read waits for its own event, and is refused when that fails, as any read. After
    :meth:`close` nothing is covered either.
    """

    def __init__(
        self,
        record: Callable[[AuditEvent], None],
        window: float,
        clock: Callable[[], float] = time.monotonic,
        flush_every: float | None = FLUSH_EVERY,
    ) -> None:
        self.window = window
        self.flush_every = flush_every  # None: no flusher thread (the caller flushes)
        self._record = record
        self._clock = clock
        self._open: dict[_Key, _Window] = {}
        self._closed: list[_Window] = []  # replaced windows, their summaries not yet written
        self._unwritten: list[AuditEvent] = []  # summaries a failed flush left, in order
        self._lock = threading.Lock()
        self._writable = True  # the last commit succeeded
        self._flusher: threading.Thread | None = None
        self._stop = threading.Event()

    def would_cover(self, event: AuditEvent) -> bool:
        """Whether an open window would cover *event* now (nothing is counted)."""
        if self.window <= 0 or not self._writable or self._stop.is_set():
            return False
        with self._lock:
            window = self._open.get(_key(event))
            return window is not None and self._clock() - window.opened < self.window

    def covered(self, event: AuditEvent) -> bool:
        """Whether *event*, a successful frame read or store, is covered by a committed event
        of an open window (then it is counted there and needs no event of its own)."""
        if self.window <= 0 or not self._writable or self._stop.is_set():
            return False
        with self._lock:
            window = self._open.get(_key(event))
            if window is None or self._clock() - window.opened >= self.window:
                return False
            window.requests += 1
            if event.SOPInstanceUID:
                window.instances.add(event.SOPInstanceUID)
            window.first = window.first or event.at
            window.last = event.at
            return True

    def record(self, event: AuditEvent) -> None:
        """Commit *event*, a successful frame read not covered, and open its window (the
        summary of the window it replaces is written by the next flush)."""
        self._commit(event)
        self.opened(event)

    def opened(self, event: AuditEvent) -> None:
        """Open *event*'s window: *event*, not covered, was committed by the caller (a store's,
        in the transaction that indexed the instance)."""
        self._writable = True
        if self.window <= 0 or self._stop.is_set():
            return
        key, now = _key(event), self._clock()
        with self._lock:
            current = self._open.get(key)
            if current is not None and now - current.opened < self.window:
                return  # a concurrent first read opened one: this read has its own event
            if current is not None and current.requests:
                self._closed.append(current)
            self._open[key] = _Window(event, now)
            self._start_flusher()

    def flush(self, everything: bool = False) -> int:
        """Write the summaries of the windows that have closed (*everything*: of all of them);
        return how many were written. Summaries not written (the index is unavailable) are
        kept, in order, for the next flush, and the error is raised."""
        now = self._clock()
        with self._lock:
            for key in [
                key
                for key, window in self._open.items()
                if everything or now - window.opened >= self.window
            ]:
                window = self._open.pop(key)
                if window.requests:
                    self._closed.append(window)
            closed, self._closed = self._closed, []
            pending, self._unwritten = self._unwritten, []
        pending += [window.summary() for window in closed]  # built outside the lock
        for index, summary in enumerate(pending):
            try:
                self._commit(summary)
            except Exception:
                with self._lock:
                    self._unwritten[:0] = pending[index:]
                raise
        return len(pending)

    def close(self) -> None:
        """Stop covering reads and the flusher, and write every open window's summary."""
        self._stop.set()
        if self._flusher is not None:
            self._flusher.join(timeout=10)
        self.flush(everything=True)

    def _commit(self, event: AuditEvent) -> None:
        try:
            self._record(event)
        except Exception:
            self._writable = False
            raise
        self._writable = True

    def _start_flusher(self) -> None:
        if self._flusher is None and self.flush_every and not self._stop.is_set():
            self._flusher = threading.Thread(
                target=self._flush_loop, name="audit-covering", daemon=True
            )
            self._flusher.start()

    def _flush_loop(self) -> None:
        assert self.flush_every is not None
        while not self._stop.wait(self.flush_every):
            try:
                self.flush()
            except Exception as exc:  # the index is down: kept, tried again next time
                log.warning("audit summaries not written yet: %s", exc)


def _key(event: AuditEvent) -> _Key:
    return (
        event.action,
        event.ae_title,
        event.detail.get("protocol"),
        event.subject,
        event.token_id,
        event.roles,
        event.facility,
        event.remote_address,
        event.StudyInstanceUID,
        event.SeriesInstanceUID,
        event.detail.get("route"),
    )
