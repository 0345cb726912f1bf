"""The worklist query: order, states, filters and paging, on SQLite and PostgreSQL; the run
summaries save_run writes and migration 0010 backfills."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import func, select

from pacs.errors import QueryError
from pacs.facilities import Scope
from pacs.index import Database, upgrade
from pacs.index.migrate import alembic_config
from pacs.index.schema import ai_run, facility, finding, job, patient, study
from pacs.ingest import Archive
from pacs.results import Finding, RunSummary, current_run
from pacs.review import ReviewStatus
from pacs.worklist import AiStatus, WorklistPage, WorklistQuery, worklist
from tests.conftest import database_url, make_archive
from tests.studies import THRESHOLD, WARD_ORDER, Study, build_ward


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def ward(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Archive, dict[str, Study]]]:
    tmp_path = tmp_path_factory.mktemp(f"ward-{request.param}")
    archive = make_archive(
        database_url(request.param, tmp_path, request), f"file://{tmp_path / 'storage'}"
    )
    yield archive, build_ward(archive)
    archive.db.dispose()


def page(archive: Archive, **query: object) -> WorklistPage:
    with archive.db.read() as conn:
        return worklist(conn, WorklistQuery(**query, scope=Scope.everything()))


def names(found: WorklistPage, ward: dict[str, Study]) -> list[str]:
    by_uid = {s.StudyInstanceUID: name for name, s in ward.items()}
    return [by_uid[item.StudyInstanceUID] for item in found.items]


def test_flagged_first_by_certainty_then_diameter_then_oldest_and_every_study_listed(
    ward: tuple[Archive, dict[str, Study]],
) -> None:
    archive, studies = ward
    found = page(archive)
    assert names(found, studies) == WARD_ORDER
    assert found.total == len(WARD_ORDER)
    items = {name: item for name, item in zip(WARD_ORDER, found.items, strict=True)}
    # a: two findings at or above the operating point; its 40 mm candidate below it is not one.
    a = items["a"]
    assert (a.flagged, a.nodules, a.largest_diameter_mm, a.highest_probability) == (
        True,
        2,
        10,
        0.9,
    )
    assert (a.PatientName, a.PatientID, a.StudyDate, a.facility) == (
        "NGUYEN^AN",
        "PA",
        "20240105",
        "north",
    )
    assert a.ModalitiesInStudy == ["CT"] and a.AccessionNumber == studies["a"].AccessionNumber
    assert [items[n].review_status for n in ("a", "b", "c")] == [
        ReviewStatus.IN_REVIEW,
        ReviewStatus.FINAL,
        ReviewStatus.UNREAD,
    ]
    assert {n: items[n].ai_status for n in items} == {
        "a": AiStatus.DONE,
        "b": AiStatus.DONE,
        "c": AiStatus.DONE,
        "d": AiStatus.DONE,
        "e": AiStatus.DONE,
        "f": AiStatus.DONE,
        "g": AiStatus.NOT_QUEUED,
        "h": AiStatus.NOT_APPLICABLE,
        "i": AiStatus.FAILED,
        "j": AiStatus.RUNNING,
        "k": AiStatus.QUEUED,
        "l": AiStatus.RUNNING,
        "n": AiStatus.NOT_QUEUED,
    }
    h = items["h"]
    assert h.ai_reason == (
        f"no eligible series; {studies['h'].SeriesInstanceUID}: Modality MR is not CT"
    )
    assert h.ModalitiesInStudy == ["MR"]
    assert items["i"].ai_reason == "RuntimeError: out of memory"
    assert items["e"].ai_reason is None
    for name in ("e", "f", "g", "h", "i", "j", "k", "l", "n"):
        unflagged = items[name]
        assert (unflagged.flagged, unflagged.nodules, unflagged.highest_probability) == (
            False,
            0,
            None,
        )
    assert items["n"].StudyDate is None


def test_the_current_run_is_the_newest_done_one_as_current_run_picks_it(
    ward: tuple[Archive, dict[str, Study]],
) -> None:
    """l has a newer run whose job is still running: the done one is shown, as the findings
    API shows it, and the status is the newest job's."""
    archive, studies = ward
    found = {item.StudyInstanceUID: item for item in page(archive).items}
    with archive.db.read() as conn:
        for study_ in studies.values():
            uid = study_.StudyInstanceUID
            run = current_run(conn, uid)
            summary = RunSummary.of(run.findings if run else [], THRESHOLD)
            item = found[uid]
            assert (item.nodules, item.highest_probability, item.largest_diameter_mm) == (
                summary.reportable,
                summary.max_probability,
                summary.max_diameter_mm,
            )


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"ai": frozenset({AiStatus.DONE})}, ["c", "d", "b", "a", "e", "f"]),
        ({"ai": frozenset({AiStatus.QUEUED, AiStatus.RUNNING})}, ["l", "j", "k"]),
        ({"ai": frozenset({AiStatus.FAILED})}, ["i"]),
        ({"ai": frozenset({AiStatus.NOT_APPLICABLE})}, ["h"]),
        ({"ai": frozenset({AiStatus.NOT_QUEUED})}, ["g", "n"]),
        ({"review": frozenset({ReviewStatus.FINAL})}, ["b"]),
        ({"review": frozenset({ReviewStatus.IN_REVIEW, ReviewStatus.FINAL})}, ["b", "a"]),
        (
            {"review": frozenset({ReviewStatus.UNREAD})},
            ["c", "d", "i", "e", "g", "h", "f", "l", "j", "k", "n"],
        ),
        ({"matching": {"ModalitiesInStudy": "MR"}}, ["h"]),
        ({"matching": {"ModalitiesInStudy": "MR\\CR"}}, ["h"]),
        ({"matching": {"StudyDate": "20240101-20240331"}}, ["b", "a", "k"]),
        ({"matching": {"StudyDate": "-20201231"}}, ["i", "e"]),
        ({"matching": {"StudyDate": "20240601"}}, ["c"]),
        ({"matching": {"PatientName": "doe^*"}}, ["c", "b", "k"]),
        ({"matching": {"PatientName": "*jane"}}, ["d", "b"]),
        ({"matching": {"PatientID": "PH"}}, ["h"]),
        ({"facilities": frozenset({"south"})}, ["d", "i", "g"]),
        ({"facilities": frozenset({"nowhere"})}, []),
        (
            {
                "facilities": frozenset({"north"}),
                "ai": frozenset({AiStatus.DONE}),
                "review": frozenset({ReviewStatus.UNREAD}),
                "matching": {"ModalitiesInStudy": "CT"},
            },
            ["c", "e", "f"],
        ),
    ],
)
def test_filters(
    ward: tuple[Archive, dict[str, Study]], query: dict[str, object], expected: list[str]
) -> None:
    archive, studies = ward
    found = page(archive, **query)
    assert names(found, studies) == expected
    assert found.total == len(expected)


def test_paging_keeps_the_order_and_counts_everything(
    ward: tuple[Archive, dict[str, Study]],
) -> None:
    archive, studies = ward
    seen = []
    for offset in range(0, 15, 4):
        found = page(archive, limit=4, offset=offset)
        assert found.total == len(WARD_ORDER)
        seen += names(found, studies)
    assert seen == WARD_ORDER
    past = page(archive, limit=4, offset=100)
    assert (past.items, past.total) == ([], len(WARD_ORDER))
    filtered = page(archive, limit=2, offset=1, ai=frozenset({AiStatus.DONE}))
    assert (names(filtered, studies), filtered.total) == (["d", "b"], 6)


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ({"matching": {"StudyDate": "2024-01-01"}}, "StudyDate"),
        ({"matching": {"StudyDate": "20241301"}}, "StudyDate"),
        ({"matching": {"ModalitiesInStudy": "ct;drop"}}, "ModalitiesInStudy"),
        ({"matching": {"PatientName": "A=B=C=D"}}, "PatientName"),
        ({"matching": {"StudyDescription": "CHEST"}}, "cannot match on StudyDescription"),
        ({"facilities": frozenset({"x" * 65})}, "facility"),
        ({"limit": -1}, "negative"),
    ],
)
def test_malformed_filters_are_refused_with_a_reason(query: dict[str, object], reason: str) -> None:
    with pytest.raises(QueryError, match=reason):
        WorklistQuery(**query, scope=Scope.everything())


def test_run_summary_counts_what_is_reported() -> None:
    findings = [Finding(0, 0, 0, 8, 0.7), Finding(0, 0, 0, 30, 0.2), Finding(0, 0, 0, 5, 0.9)]
    assert RunSummary.of(findings, 0.5) == RunSummary(2, 0.9, 8)
    assert RunSummary.of(findings, None) == RunSummary(3, 0.9, 30)
    assert RunSummary.of([], 0.5) == RunSummary(0, None, None)


def test_migration_0010_backfills_the_summaries_of_existing_runs(tmp_path: Path) -> None:
    """Runs saved before 0010 kept only reported findings: each counts, threshold unknown."""
    db = Database(f"sqlite:///{tmp_path / 'index.db'}")
    upgrade(db, "0009")
    now = datetime.now(UTC)
    with db.write() as conn:
        conn.execute(facility.insert().values(id=1, name="north", created_at=now))
        conn.execute(
            patient.insert().values(
                id=1,
                facility_id=1,
                patient_id="P",
                issuer_of_patient_id="",
                updated_at=now,
                fhir_id="f" * 32,
            )
        )
        conn.execute(
            study.insert().values(
                id=7, study_instance_uid="1.2.3", patient_fk=1, created_at=now, last_received_at=now
            )
        )
        for job_id in (1, 2):
            conn.execute(
                job.insert().values(
                    id=job_id,
                    kind="nodule-detection",
                    study_instance_uid="1.2.3",
                    payload="{}",
                    status="done",
                    attempts=1,
                    max_attempts=3,
                    run_after=now,
                    created_at=now,
                    updated_at=now,
                )
            )
            conn.execute(
                ai_run.insert().values(
                    id=job_id,
                    job_id=job_id,
                    study_instance_uid="1.2.3",
                    model_name="demo",
                    model_version="1",
                    outcome="analysed",
                    rejections="[]",
                    seconds=1.0,
                    created_at=now,
                )
            )
        conn.execute(
            finding.insert(),
            [
                {"run_fk": 2, "tracking_uid": "1.9", "x": 0, "y": 0, "z": 0}
                | {"diameter_mm": d, "probability": p}
                for d, p in ((6.0, 0.8), (12.0, 0.6))
            ],
        )
    upgrade(db)
    with db.read() as conn:
        rows = conn.execute(
            select(
                ai_run.c.id,
                ai_run.c.reportable_count,
                ai_run.c.max_probability,
                ai_run.c.max_diameter_mm,
                ai_run.c.report_threshold,
                ai_run.c.study_fk,
            ).order_by(ai_run.c.id)
        ).all()
    assert [tuple(row) for row in rows] == [
        (1, 0, None, None, None, 7),
        (2, 2, 0.8, 12.0, None, 7),
    ]
    # Neither way copies ai_run (a copy on SQLite would cascade-delete its findings).
    command.downgrade(alembic_config(db), "0009")
    with db.read() as conn:
        kept = conn.execute(select(func.count()).select_from(finding)).scalar_one()
    db.dispose()
    assert kept == 2
