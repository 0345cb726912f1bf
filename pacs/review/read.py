"""Reading a study's review from the index (an unread one from its current AI run)."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select

from pacs.index.database import as_utc
from pacs.index.schema import ai_run, finding, review, review_action, review_finding
from pacs.lung_rads import History, Nodule, NoduleType, suggest
from pacs.results import Character, RunOutcome, characters_of_run, current_run
from pacs.review.model import (
    ActionKind,
    ActionRecord,
    AnalysedRun,
    Decision,
    NotReviewable,
    NotSignable,
    Origin,
    Point,
    Review,
    ReviewedFinding,
    ReviewStatus,
    SignedReport,
)


def load_review(conn: Connection, StudyInstanceUID: str) -> Review:
    """The study's review; an unread one (version 0) from the current AI run when none exists."""
    row = conn.execute(
        select(review).where(review.c.study_instance_uid == StudyInstanceUID)
    ).first()
    latest = analysed_run(conn, StudyInstanceUID)
    if row is None:
        if latest is None:
            return _review(StudyInstanceUID, ReviewStatus.UNREAD, 0, 0, None, [])
        return _review(
            StudyInstanceUID,
            ReviewStatus.UNREAD,
            0,
            0,
            *latest,
            histories=histories(conn, latest[0].id),
            characters=characters_of_run(conn, latest[0].id),
        )
    findings = [
        finding_of(f)
        for f in conn.execute(
            select(review_finding)
            .where(review_finding.c.review_fk == row.id)
            .order_by(review_finding.c.id)
        ).all()
    ]
    history = [
        ActionRecord(
            a.version,
            as_utc(a.at),
            a.actor,
            ActionKind(a.action),
            a.tracking_uid,
            json.loads(a.detail) if a.detail else {},
        )
        for a in conn.execute(
            select(review_action)
            .where(review_action.c.review_fk == row.id)
            .order_by(review_action.c.id)
        ).all()
    ]
    run = AnalysedRun(row.run_fk, row.series_instance_uid, row.ai_sr_sop_instance_uid)
    newer = None if latest is None or latest[0].id == row.run_fk else latest[0].id
    return _review(
        StudyInstanceUID,
        ReviewStatus(row.status),
        row.version,
        row.revision,
        run,
        findings,
        impression=row.impression,
        lung_rads=row.lung_rads,
        signed=None if row.signed_report is None else signed_from_json(row.signed_report),
        history=history,
        newer_run=newer,
        histories=histories(conn, row.run_fk),
        characters=characters_of_run(conn, row.run_fk),
    )


def check_signable(current: Review) -> None:
    """Raise unless *current* can be signed now (the checks a signature repeats when it
    commits are the version's; these are the content's)."""
    if current.run is None:
        raise NotReviewable(f"study {current.StudyInstanceUID} has no analysed AI run to report")
    if current.status == ReviewStatus.FINAL:
        raise NotSignable(f"revision {current.revision} is signed and nothing changed since")
    if current.pending:
        raise NotSignable(
            f"{len(current.pending)} AI finding(s) are still pending: confirm or reject each "
            "before signing",
            current.pending,
        )


def signed_reports(conn: Connection, uids: list[str]) -> dict[str, SignedReport]:
    """The last signed report of each of the studies *uids* that has one."""
    rows = conn.execute(
        select(review.c.study_instance_uid, review.c.signed_report).where(
            review.c.study_instance_uid.in_(uids), review.c.signed_report.is_not(None)
        )
    ).all()
    return {uid: signed_from_json(text) for uid, text in rows}


# Serialisation of the signed report (the review.signed_report column).


def signed_to_json(signed: SignedReport) -> str:
    body = asdict(signed)
    body["signed_at"] = signed.signed_at.isoformat()
    return json.dumps(body)


def signed_from_json(text: str) -> SignedReport:
    body: dict[str, Any] = json.loads(text)
    nodules = [
        ReviewedFinding(
            tracking_uid=n["tracking_uid"],
            origin=Origin(n["origin"]),
            decision=Decision(n["decision"]),
            reason=n["reason"],
            centre=Point(**n["centre"]),
            diameter_mm=n["diameter_mm"],
            probability=n["probability"],
        )
        for n in body.pop("nodules")
    ]
    body["signed_at"] = datetime.fromisoformat(body["signed_at"])
    return SignedReport(**body, nodules=nodules)


def analysed_run(
    conn: Connection, StudyInstanceUID: str
) -> tuple[AnalysedRun, list[ReviewedFinding]] | None:
    """The current AI run when it analysed a series, with its reportable findings pending."""
    run = current_run(conn, StudyInstanceUID)
    if run is None or run.outcome != RunOutcome.ANALYSED or run.SeriesInstanceUID is None:
        return None
    threshold = run.report_threshold
    findings = [
        ReviewedFinding(
            f.tracking_uid,
            Origin.AI,
            Decision.PENDING,
            None,
            Point(f.x, f.y, f.z),
            f.reported_diameter_mm,
            f.probability,
        )
        for f in run.findings
        if threshold is None or f.probability >= threshold
    ]
    return AnalysedRun(run.id, run.SeriesInstanceUID, run.sr_sop_instance_uid), findings


def _review(
    StudyInstanceUID: str,
    status: ReviewStatus,
    version: int,
    revision: int,
    run: AnalysedRun | None,
    findings: list[ReviewedFinding],
    *,
    impression: str = "",
    lung_rads: str | None = None,
    signed: SignedReport | None = None,
    history: list[ActionRecord] | None = None,
    newer_run: int | None = None,
    histories: tuple[bool, dict[str, History]] = (False, {}),
    characters: dict[str, Character] | None = None,
) -> Review:
    compared, predecessors = histories
    characters = characters or {}
    reported = [
        _nodule(f, characters.get(f.tracking_uid), predecessors.get(f.tracking_uid))
        for f in findings
        if f.decision == Decision.CONFIRMED
    ]
    return Review(
        StudyInstanceUID=StudyInstanceUID,
        status=status,
        version=version,
        revision=revision,
        run=run,
        findings=findings,
        impression=impression,
        lung_rads=lung_rads,
        suggestion=suggest(reported, compared=compared),
        signed=signed,
        history=history or [],
        newer_run=newer_run,
    )


def _nodule(f: ReviewedFinding, character: Character | None, history: History | None) -> Nodule:
    """A confirmed finding as Lung-RADS reads it: at the review's diameter (the radiologist's
    when edited), with the AI's type, solid part and volume when its outline gave them."""
    centre = (f.centre.x, f.centre.y, f.centre.z)
    if character is None:
        return Nodule(f.tracking_uid, f.diameter_mm, centre=centre, history=history)
    return Nodule(
        f.tracking_uid,
        f.diameter_mm,
        type=NoduleType(character.type),
        type_probability=character.type_probability,
        solid_diameter_mm=character.solid_diameter_mm,
        volume_mm3=character.volume_mm3,
        centre=centre,
        history=history,
    )


def histories(conn: Connection, run_id: int | None) -> tuple[bool, dict[str, History]]:
    """Whether the run compared its findings with a prior CT, and each matched finding's
    predecessor (its diameter, the interval): what the Lung-RADS suggestion reads growth from.

    A nodule the radiologist added, or an AI one with no predecessor, counts as new.
    """
    if run_id is None:
        return False, {}
    interval = conn.execute(
        select(ai_run.c.prior_interval_days).where(
            ai_run.c.id == run_id, ai_run.c.prior_study_instance_uid.is_not(None)
        )
    ).first()
    if interval is None:
        return False, {}
    rows = conn.execute(
        select(finding.c.tracking_uid, finding.c.prior_diameter_mm).where(
            finding.c.run_fk == run_id, finding.c.prior_diameter_mm.is_not(None)
        )
    ).all()
    days = interval.prior_interval_days
    return True, {uid: History(diameter, interval_days=days) for uid, diameter in rows}


def finding_of(row: Any) -> ReviewedFinding:
    return ReviewedFinding(
        tracking_uid=row.tracking_uid,
        origin=Origin(row.origin),
        decision=Decision(row.decision),
        reason=row.reason,
        centre=Point(row.x, row.y, row.z),
        diameter_mm=row.diameter_mm,
        probability=row.probability,
    )
