"""Durable study stability (DESIGN.md, data flow 4).

A study is stable ``stable_age`` seconds after its last instance arrived. The sweeper marks it
so and appends a ``study.stable`` row to the change feed, in one transaction. A later instance
moves ``last_received_at`` past ``stable_at``: the study is unstable again and the next sweep
fires again. All state is in the index, so it survives restarts; several sweepers (several
``pacs serve`` processes on one PostgreSQL) do not double-fire, because the marking UPDATE
re-checks its condition on rows another sweeper has just marked.

A study that looks incomplete waits ``incomplete_age`` instead (``PACS_STABLE_AGE_INCOMPLETE``,
longer), so a send broken off midway is not analysed half-done while its sender retries:

- **unreleased**: an instance arrived over a DIMSE association that has not ended with an
  A-RELEASE (still open, aborted, its connection lost, the receiver killed) or that answered a
  transient failure (0xA700: the sender will send it again). Every C-STORE sets the flag in its
  index transaction; the association's A-RELEASE clears it (:func:`mark_released`), so it is
  durable and right whichever receiver process or host stored what;
- **gaps**: a series whose InstanceNumbers have a gap (fewer distinct numbers than from its
  lowest to its highest). The index has no slice positions, so a series missing its first
  or last slices is not seen here, only through the unreleased flag.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy import ColumnElement, and_, exists, func, not_, or_, select

from pacs.changefeed import ChangeKind, append_change
from pacs.index import Database, as_utc
from pacs.index.schema import instance, series, study
from pacs.jobs import enqueue
from pacs.metrics import metrics
from pacs.outage import Outage

log = logging.getLogger(__name__)


def has_gaps() -> ColumnElement[bool]:
    """Whether a series of the study (correlated with the outer ``study`` row) has a gap in its
    InstanceNumbers; instances without one do not count."""
    numbers = instance.c.instance_number
    gapped = (
        select(series.c.id)
        .join(instance, instance.c.series_fk == series.c.id)
        .where(series.c.study_fk == study.c.id)
        .group_by(series.c.id)
        .having(func.max(numbers) - func.min(numbers) + 1 > func.count(numbers.distinct()))
    )
    return exists(gapped)


def mark_stable(
    db: Database,
    stable_age: timedelta,
    now: datetime | None = None,
    job_kinds: tuple[str, ...] = (),
    incomplete_age: timedelta | None = None,
) -> list[str]:
    """Mark every study quiet for *stable_age* as stable, or for *incomplete_age* when it
    looks incomplete (module docstring); return their Study Instance UIDs.

    A job of each of *job_kinds* is queued for each such study in the same transaction, so a
    stable study yields its jobs exactly once however many sweepers run. *incomplete_age*
    None: ten times *stable_age*.
    """
    now = now or datetime.now(UTC)
    cutoff = now - stable_age
    incomplete_cutoff = now - (incomplete_age if incomplete_age is not None else stable_age * 10)
    with db.write() as conn:
        rows = conn.execute(
            study.update()
            .where(
                study.c.last_received_at <= cutoff,
                or_(study.c.stable_at.is_(None), study.c.stable_at < study.c.last_received_at),
                or_(
                    study.c.last_received_at <= incomplete_cutoff,
                    and_(not_(study.c.unreleased), not_(has_gaps())),
                ),
            )
            .values(stable_at=now)
            .returning(study.c.study_instance_uid, study.c.last_received_at)
        ).all()
        marked = [uid for uid, _ in rows]
        lag = metrics().stability_lag
        for _, last in rows:
            lag.observe(max(0.0, (cutoff - as_utc(last)).total_seconds()))
        for uid in marked:
            append_change(conn, ChangeKind.STUDY_STABLE, uid, now=now)
            for kind in job_kinds:
                enqueue(conn, kind, uid, now=now)
    return marked


def mark_released(db: Database, sent: dict[str, datetime]) -> int:
    """Clear the unreleased flag of the studies a released association stored into: *sent*
    maps each to when its last instance in that association was stored. A study another
    association stored into since keeps its flag (that one may still be open or broken off).
    Returns how many were cleared."""
    if not sent:
        return 0
    cleared = 0
    with db.write() as conn:
        for uid, last in sent.items():
            cleared += conn.execute(
                study.update()
                .where(
                    study.c.study_instance_uid == uid,
                    study.c.unreleased,
                    study.c.last_received_at <= last,
                )
                .values(unreleased=False)
            ).rowcount
    return cleared


class Sweeper:
    """Runs mark_stable() every *interval* in a thread until stopped."""

    def __init__(
        self,
        db: Database,
        stable_age: timedelta,
        interval: timedelta,
        on_stable: Callable[[list[str]], None] | None = None,
        job_kinds: tuple[str, ...] = (),
        incomplete_age: timedelta | None = None,
    ) -> None:
        self.db = db
        self.job_kinds = job_kinds
        self.stable_age = stable_age
        self.incomplete_age = incomplete_age
        self.interval = interval
        self.on_stable = on_stable
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stability-sweeper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        interval = self.interval.total_seconds()
        outage, wait = Outage("stability sweeper", log, interval), interval
        while not self._stop.wait(wait):
            try:
                marked = mark_stable(
                    self.db,
                    self.stable_age,
                    job_kinds=self.job_kinds,
                    incomplete_age=self.incomplete_age,
                )
            except Exception as exc:  # the index may be down for a while: back off, try again
                wait = outage.failed(exc)
                continue
            outage.succeeded()
            wait = interval
            if marked:
                log.info("%d stud%s stable", len(marked), "y" if len(marked) == 1 else "ies")
                if self.on_stable is not None:
                    try:
                        self.on_stable(marked)
                    except Exception:  # a callback's bug must not end the sweeper
                        log.exception("on_stable callback failed for %d studies", len(marked))
