"""Frame reads covered per series and reader (pacs.audit.covering): which reads one committed
event covers, the summary written when the window closes, and what happens when the index
cannot take it."""

from __future__ import annotations

from dataclasses import replace

import pytest

from pacs.audit import AuditAction, AuditEvent
from pacs.audit.covering import MAX_LISTED, CoveredEvents
from pacs.errors import AuditUnavailable

ROUTE = "/dicom-web/studies/{study}/series/{series}/instances/{instance}/frames/{frames}"


class Trail:
    """The events committed, in order; fails while *down*."""

    def __init__(self) -> None:
        self.events: list[AuditEvent] = []
        self.down = False

    def record(self, event: AuditEvent) -> None:
        if self.down:
            raise AuditUnavailable("audit event not written: the index is down")
        self.events.append(event)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def read(instance: str, series: str = "1.2.3.4", subject: str = "dr-a", **more: str) -> AuditEvent:
    return AuditEvent(
        AuditAction.RETRIEVE,
        subject=subject,
        roles=("radiologist",),
        token_id="jti-1",
        remote_address="10.0.0.7",
        StudyInstanceUID="1.2.3",
        SeriesInstanceUID=series,
        SOPInstanceUID=instance,
        detail={"method": "GET", "route": ROUTE, "status": 200, **more},
    )


def reads(window: float = 60) -> tuple[CoveredEvents, Trail, Clock]:
    trail, clock = Trail(), Clock()
    return CoveredEvents(trail.record, window, clock, flush_every=None), trail, clock


def serve(frames: CoveredEvents, event: AuditEvent) -> None:
    """What the API does for a successful frame read."""
    if not frames.covered(event):
        frames.record(event)


def test_the_first_read_is_committed_the_next_ones_are_counted_then_summarised() -> None:
    frames, trail, clock = reads()
    for number in range(1, 301):
        clock.now += 0.01
        serve(frames, read(f"1.2.3.4.{number}"))
    assert [e.SOPInstanceUID for e in trail.events] == ["1.2.3.4.1"]  # before its data went out
    assert frames.flush() == 0  # the window is still open
    clock.now += 60
    assert frames.flush() == 1
    first, summary = trail.events
    assert summary.action is AuditAction.RETRIEVE
    assert (summary.subject, summary.token_id, summary.remote_address) == (
        "dr-a",
        "jti-1",
        "10.0.0.7",
    )
    assert summary.SeriesInstanceUID == "1.2.3.4" and summary.SOPInstanceUID is None
    assert summary.detail["requests"] == 299
    assert summary.detail["instances"] == 299
    assert summary.detail["sop_instance_uids"][0] == "1.2.3.4.10"  # sorted as text
    assert "1.2.3.4.1" not in summary.detail["sop_instance_uids"]  # its own event has it
    assert summary.detail["covered_by_event_at"] == first.at.isoformat()
    assert summary.detail["route"] == ROUTE
    assert summary.at > first.at  # stamped when written: a periodic export still sees it
    assert summary.detail["first"] < summary.detail["last"] <= summary.at.isoformat()
    assert frames.flush(everything=True) == 0  # nothing twice


def test_another_reader_series_or_address_is_not_covered() -> None:
    frames, _, _ = reads()
    serve(frames, read("1.2.3.4.1"))
    others = [
        read("1.2.3.4.2", subject="dr-b"),
        read("1.2.3.5.1", series="1.2.3.5"),
        replace(read("1.2.3.4.3"), remote_address="10.0.0.8"),
        replace(read("1.2.3.4.4"), token_id="jti-2"),
        replace(read("1.2.3.4.5"), facility="north"),
    ]
    assert not any(frames.covered(event) for event in others)
    assert frames.covered(read("1.2.3.4.6"))


def test_a_read_after_the_window_gets_its_own_event_and_closes_the_old_one() -> None:
    frames, trail, clock = reads(window=10)
    serve(frames, read("1.2.3.4.1"))
    serve(frames, read("1.2.3.4.2"))
    clock.now += 10
    serve(frames, read("1.2.3.4.3"))  # a new window: committed before its data
    assert [e.SOPInstanceUID for e in trail.events] == ["1.2.3.4.1", "1.2.3.4.3"]
    assert frames.flush() == 1  # the old window's summary, queued when it was replaced
    assert trail.events[-1].detail["sop_instance_uids"] == ["1.2.3.4.2"]


def test_concurrent_first_reads_each_get_an_event_and_one_window() -> None:
    frames, trail, clock = reads()
    first, second = read("1.2.3.4.1"), read("1.2.3.4.2")
    assert not frames.covered(first) and not frames.covered(second)  # both before any window
    frames.record(first)
    frames.record(second)
    serve(frames, read("1.2.3.4.3"))
    clock.now += 60
    frames.flush()
    assert [e.SOPInstanceUID for e in trail.events] == ["1.2.3.4.1", "1.2.3.4.2", None]
    assert trail.events[-1].detail["requests"] == 1


def test_a_summary_the_index_refuses_is_kept_for_the_next_flush() -> None:
    frames, trail, clock = reads()
    serve(frames, read("1.2.3.4.1"))
    serve(frames, read("1.2.3.4.2"))
    clock.now += 60
    trail.down = True
    with pytest.raises(AuditUnavailable):
        frames.flush()
    trail.down = False
    assert frames.flush() == 1
    assert trail.events[-1].detail["requests"] == 1


def test_nothing_is_covered_while_the_trail_cannot_be_written() -> None:
    frames, trail, clock = reads(window=10)
    serve(frames, read("1.2.3.4.1"))
    serve(frames, read("1.2.3.4.2"))
    clock.now += 10
    trail.down = True
    with pytest.raises(AuditUnavailable):
        frames.flush()  # the summary is not written: the index is down
    clock.now -= 5  # (a window still open would otherwise cover the next read)
    assert not frames.covered(read("1.2.3.4.3"))  # its own event: the API answers 503
    trail.down = False
    frames.record(read("1.2.3.4.3"))  # written: covering again
    assert frames.covered(read("1.2.3.4.4"))


def test_after_close_every_read_has_its_own_event() -> None:
    frames, trail, _ = reads()
    serve(frames, read("1.2.3.4.1"))
    frames.close()
    serve(frames, read("1.2.3.4.2"))  # a request still draining when the API stopped
    serve(frames, read("1.2.3.4.3"))
    assert [e.SOPInstanceUID for e in trail.events] == ["1.2.3.4.1", "1.2.3.4.2", "1.2.3.4.3"]
    assert frames.flush(everything=True) == 0


def test_a_summary_leaves_out_the_first_reads_query() -> None:
    frames, trail, _ = reads()
    serve(frames, read("1.2.3.4.1", query="facility=north"))
    serve(frames, read("1.2.3.4.2"))
    frames.close()
    assert "query" not in trail.events[-1].detail


def test_an_uncommitted_first_read_opens_no_window() -> None:
    frames, trail, _ = reads()
    trail.down = True
    with pytest.raises(AuditUnavailable):
        frames.record(read("1.2.3.4.1"))  # the API answers 503
    trail.down = False
    assert not frames.covered(read("1.2.3.4.2"))


def test_close_writes_every_open_window() -> None:
    frames, trail, _ = reads()
    serve(frames, read("1.2.3.4.1"))
    serve(frames, read("1.2.3.4.2"))
    serve(frames, read("1.2.3.5.1", series="1.2.3.5"))  # a window with no covered read
    frames.close()
    assert [e.SOPInstanceUID for e in trail.events] == ["1.2.3.4.1", "1.2.3.5.1", None]


def test_a_summary_lists_at_most_max_listed_instances_but_counts_them_all() -> None:
    frames, trail, _ = reads()
    for number in range(MAX_LISTED + 6):
        serve(frames, read(f"1.2.3.4.{number}"))
    frames.close()
    summary = trail.events[-1].detail
    assert summary["instances"] == MAX_LISTED + 5
    assert len(summary["sop_instance_uids"]) == MAX_LISTED


def test_window_zero_records_every_read() -> None:
    frames, trail, _ = reads(window=0)
    for number in range(3):
        serve(frames, read(f"1.2.3.4.{number}"))
    frames.close()
    assert len(trail.events) == 3
