"""The change feed as consumers read it: every change exactly once, in sequence order.

Sequence numbers are taken when a row is inserted, not when its transaction commits: on
PostgreSQL a transaction can commit seq 41 after another has already committed seq 42. A
reader that had been given 42 would move past 41 for ever. So a read stops before the first
gap in the sequence (a gap is a transaction still in flight, or one rolled back) unless the
rows after the gap are older than ``settle`` (then the gap was a rollback: nothing will fill
it). On SQLite writers are serialised, and there are no gaps but rollbacks.

A principal of some facilities reads only the changes of studies its scope sees
(:func:`read_visible_changes`); its cursor still moves past the rows it does not see, so a
poller never stalls behind another facility's changes.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, select

from pacs.index.database import as_utc
from pacs.index.queries import Change, changes
from pacs.index.schema import change, study

if TYPE_CHECKING:  # pacs.facilities imports the index, which appends changes
    from pacs.facilities import Scope


class ChangeKind(enum.StrEnum):
    """What a change-feed row says happened (also the webhook event names)."""

    INSTANCE_STORED = "instance.stored"
    INSTANCE_REPLACED = "instance.replaced"
    INSTANCE_DELETED = "instance.deleted"
    STUDY_STABLE = "study.stable"
    FINDINGS_READY = "findings.ready"
    REPORT_FINAL = "report.final"
    REPORT_AMENDED = "report.amended"


def append_change(
    conn: Connection,
    kind: ChangeKind,
    StudyInstanceUID: str,
    *,
    now: datetime,
    SeriesInstanceUID: str | None = None,
    SOPInstanceUID: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    """Append one change row in *conn*'s transaction: the only way rows enter the feed, so a
    change is visible exactly when the data it describes commits."""
    conn.execute(
        _INSERT,  # values as parameters: the statement is compiled once and cached
        {
            "created_at": now,
            "kind": kind.value,
            "study_instance_uid": StudyInstanceUID,
            "series_instance_uid": SeriesInstanceUID,
            "sop_instance_uid": SOPInstanceUID,
            "detail": None if detail is None else json.dumps(detail),
        },
    )


_INSERT = change.insert()


DEFAULT_SETTLE = timedelta(seconds=5)


def read_changes(
    conn: Connection,
    since: int,
    limit: int,
    settle: timedelta = DEFAULT_SETTLE,
    now: datetime | None = None,
) -> list[Change]:
    """Up to *limit* changes after *since* that can never be preceded by a later commit."""
    now = now or datetime.now(UTC)
    found = changes(conn, since, limit)
    settled: list[Change] = []
    expected = since + 1
    for item in found:
        created = as_utc(item.created_at)
        if item.seq != expected and created > now - settle:
            break  # a transaction before it may still commit: come back later
        settled.append(item)
        expected = item.seq + 1
    return settled


@dataclass(frozen=True)
class ChangePage:
    """The changes a scope sees among those read, and the cursor to read on from.

    Attributes
    ----------
    changes : list of Change
        The settled changes of studies the scope sees, in sequence order.
    last : int
        The sequence number of the last settled row read, seen or not (the next ``since``);
        the ``since`` given when there was none.
    """

    changes: list[Change]
    last: int


def read_visible_changes(
    conn: Connection,
    scope: Scope,
    since: int,
    limit: int,
    settle: timedelta = DEFAULT_SETTLE,
    now: datetime | None = None,
) -> ChangePage:
    """Read up to *limit* settled changes after *since*, keep those *scope* sees.

    Fewer than *limit* changes (none, even) do not mean the feed is drained: read on from
    ``last`` until it stops moving.
    """
    settled = read_changes(conn, since, limit, settle, now)
    return ChangePage(visible(conn, scope, settled), settled[-1].seq if settled else since)


def visible(conn: Connection, scope: Scope, items: list[Change]) -> list[Change]:
    """The changes of *items* whose study *scope* sees now (own or shared). A global scope
    sees every change, a deleted study's too; a facility's scope no longer sees a study that
    is gone from the index."""
    if scope.is_global or not items:
        return items
    uids = sorted({item.StudyInstanceUID for item in items})
    seen = set(
        conn.execute(
            select(study.c.study_instance_uid).where(
                study.c.study_instance_uid.in_(uids), scope.study_condition()
            )
        ).scalars()
    )
    return [item for item in items if item.StudyInstanceUID in seen]
