"""Signing in-process: a signature that loses to a concurrent edit leaves nothing behind."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from sqlalchemy import select

from pacs.index.schema import instance
from pacs.ingest import Archive
from pacs.results import Character
from pacs.review import (
    Confirm,
    Correct,
    InvalidEdit,
    Reject,
    ReviewStatus,
    SetImpression,
    StaleVersion,
    edit_review,
    load_review,
    stored_dataset,
)
from tests.inference.sr_checks import code, groups
from tests.pacs.test_review import LARGE, SMALL, analysed_study
from viewer_api import signing


def _sources(archive: Archive) -> list[str]:
    with archive.db.read() as conn:
        return list(conn.execute(select(instance.c.source)).scalars())


def test_a_signature_that_loses_a_race_takes_its_sr_back(
    embedded_archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = embedded_archive
    s = analysed_study(a, [LARGE, SMALL])
    uid = s.StudyInstanceUID
    edit_review(a, uid, 0, "dr-a", Confirm(LARGE.tracking_uid))
    edit_review(a, uid, 1, "dr-a", Reject(SMALL.tracking_uid))
    build = signing.build_signed_sr

    def build_while_dr_b_edits(*args: Any, **kwargs: Any) -> Any:
        # Another radiologist acts after the signature's first check, before its commit.
        edit_review(a, uid, 2, "dr-b", SetImpression("dr-b was here"))
        return build(*args, **kwargs)

    monkeypatch.setattr(signing, "build_signed_sr", build_while_dr_b_edits)
    before = _sources(a)
    with pytest.raises(StaleVersion):
        signing.sign(a, uid, 2, "dr-a")
    assert _sources(a) == before  # the stored SR was taken back
    with a.db.read() as conn:
        review = load_review(conn, uid)
    assert (review.status, review.revision, review.signed) == (ReviewStatus.IN_REVIEW, 0, None)
    assert review.impression == "dr-b was here"  # the edit that won is kept

    monkeypatch.setattr(signing, "build_signed_sr", build)
    signed = signing.sign(a, uid, 3, "dr-a")
    assert (signed.status, signed.revision) == (ReviewStatus.FINAL, 1)
    assert _sources(a) == [*before, "REVIEW"]


def test_no_nodules_signed_from_unread_and_a_subject_that_is_no_name(
    embedded_archive: Archive,
) -> None:
    a = embedded_archive
    s = analysed_study(a, [])
    with pytest.raises(InvalidEdit, match="cannot sign as"):
        signing.sign(a, s.StudyInstanceUID, 0, "back\\slash")
    assert "REVIEW" not in _sources(a)
    # A study where the AI found nothing is signed straight from unread: a "no nodules" report.
    signed = signing.sign(a, s.StudyInstanceUID, 0, "dr-a")
    assert (signed.status, signed.version, signed.lung_rads, signed.suggestion.category) == (
        ReviewStatus.FINAL,
        1,
        None,
        "1",
    )
    assert signed.signed is not None and signed.signed.nodules == []
    assert signed.signed.impression == "No lung nodule confirmed. Lung-RADS 1."


def test_the_signed_report_keeps_the_ai_character_only_where_the_size_was_kept(
    embedded_archive: Archive,
) -> None:
    a = embedded_archive
    solid = Character("solid", 0.95, 24.0, 22.7, 23.35, 6500.0, 23.35)
    glass = Character("ground-glass", 0.9, 5.6, 4.8, 5.2, 70.0, None)
    kept, corrected = replace(LARGE, character=solid), replace(SMALL, character=glass)
    uid = analysed_study(a, [kept, corrected]).StudyInstanceUID
    edit_review(a, uid, 0, "dr-a", Confirm(kept.tracking_uid))
    edit_review(a, uid, 1, "dr-a", Correct(corrected.tracking_uid, diameter_mm=7.5))
    edit_review(a, uid, 2, "dr-a", Confirm(corrected.tracking_uid))
    signed = signing.sign(a, uid, 3, "dr-a")
    assert signed.signed is not None
    sr = stored_dataset(a, signed.signed.SOPInstanceUID)
    assert sr is not None
    first, second = groups(sr)
    types = [
        [i.ConceptCodeSequence[0].CodeValue for i in g.ContentSequence if code(i) == "type"]
        for g in (first, second)
    ]
    assert types == [["solid"], []]  # 7.5 mm is the radiologist's: no outline describes it
