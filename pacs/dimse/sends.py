"""Whether a DIMSE send ended whole: the studies each association stored into, cleared of
their ``unreleased`` flag when it ends with an A-RELEASE (``pacs.stability``).

Every C-STORE marks its study unreleased in its own index transaction (``pacs.index.records``).
Only a normal A-RELEASE of the association clears the flag again, and only when no store of
it answered a transient failure (0xA700 Out of Resources: the sender will send that instance
again). An A-ABORT, a lost connection, a network timeout or a killed receiver leave the flag
set, so the study waits ``PACS_STABLE_AGE_INCOMPLETE`` rather than being analysed half-sent,
until a resend ends with an A-RELEASE. The state that matters is in the index; what is kept
here is only what one association of this process stored, while it is open.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pacs.index import Database
from pacs.stability import mark_released

log = logging.getLogger(__name__)


@dataclass
class _Send:
    """What one association stored: each study and when its last instance was stored."""

    studies: dict[str, datetime] = field(default_factory=dict)
    transient_failure: bool = False


class Sends:
    """The open associations' sends of one DIMSE server (its handlers)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._lock = threading.Lock()
        self._open: dict[Any, _Send] = {}

    def stored(self, assoc: Any, StudyInstanceUID: str) -> None:
        """A C-STORE of *assoc* into the study was stored (its index transaction committed)."""
        with self._lock:
            send = self._open.setdefault(assoc, _Send())
            send.studies[StudyInstanceUID] = datetime.now(UTC)

    def failed(self, assoc: Any) -> None:
        """A C-STORE of *assoc* answered a transient failure: its release proves nothing."""
        with self._lock:
            self._open.setdefault(assoc, _Send()).transient_failure = True

    def on_released(self, event: Any) -> None:
        """EVT_RELEASED: the send ended whole; clear its studies' flag unless a store failed."""
        with self._lock:
            send = self._open.pop(event.assoc, None)
        if send is None or send.transient_failure:
            return
        try:
            mark_released(self.db, send.studies)
        except Exception:  # the flag stays set: the study only waits longer to be stable
            log.exception("could not record the release of %d stud(ies)", len(send.studies))

    def on_closed(self, event: Any) -> None:
        """EVT_CONN_CLOSE: forget the association (after an abort its studies stay flagged)."""
        with self._lock:
            send = self._open.pop(event.assoc, None)
        if send is not None and send.studies:
            log.info(
                "association from %s ended without A-RELEASE: %d stud(ies) wait longer to be "
                "stable",
                event.assoc.requestor.ae_title,
                len(send.studies),
            )
