"""Signing a review: the verified TID 1500 SR built, stored through the one ingest path, and
the review made final with it, in that order.

1. Check the review the client saw: its version, no pending AI finding, something to sign.
2. Build the SR (``inference.report_sr``) from the analysed series' headers, the confirmed
   and added nodules, the impression and the Lung-RADS category, with the AI SR and the
   previous signed SR (an amendment) as predecessors. One series holds every revision; the
   revision is the InstanceNumber. The AI SR is read, never changed.
3. Store it (``Archive.store``, source ``REVIEW``: it never makes the study unstable).
4. In one transaction, checking the version again: the review final at the next revision, the
   ``sign`` action, and a ``report.final`` / ``report.amended`` change (webhooks follow it).

Should another radiologist act between 1 and 4, the commit is refused and the SR stored in 3
is taken back (rows, then blob): a VERIFIED report whose content the review does not hold
must not stay visible in the study.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from io import BytesIO

from pydicom import Dataset
from pydicom.uid import generate_uid

from inference.report_sr import ReportedNodule, Signature, build_signed_sr, person_name
from pacs.ingest import Archive, Source
from pacs.results import Character, characters_of_run
from pacs.review import (
    InvalidEdit,
    NotReviewable,
    Origin,
    Review,
    ReviewedFinding,
    SignedReport,
    StaleVersion,
    check_signable,
    discard_instance,
    facility_of_series,
    load_review,
    record_signature,
    series_headers,
    stored_dataset,
)

log = logging.getLogger(__name__)


def sign(archive: Archive, StudyInstanceUID: str, seen: int, actor: str) -> Review:
    """Sign the review at version *seen* as *actor*; returns the review, final.

    Raises
    ------
    StaleVersion
        The review is not (or no longer) at *seen*; nothing stays changed.
    NotSignable, NotReviewable
        Pending findings, nothing new to sign, or no analysed AI run (or its series is gone).
    InvalidEdit
        *actor* cannot be written as the verifying observer's name.
    """
    # 1. The review as the client saw it, and the character the AI measured of each finding.
    with archive.db.read() as conn:
        current = load_review(conn, StudyInstanceUID)
        characters = characters_of_run(conn, current.run.id if current.run else None)
    if current.version != seen:
        raise StaleVersion.behind(current.version, seen)
    check_signable(current)
    assert current.run is not None  # check_signable refuses a review without one

    # 2. The SR.
    now = datetime.now(UTC)
    revision = current.revision + 1
    series_uid = current.signed.SeriesInstanceUID if current.signed else str(generate_uid())
    category = current.lung_rads or current.suggestion.category
    note = lung_rads_note(current)
    impression = current.impression.strip() or default_impression(current, category)
    try:
        person_name(actor)
    except ValueError as exc:
        raise InvalidEdit(f"cannot sign as {actor!r}: {exc}") from exc
    headers = series_headers(archive, current.run.SeriesInstanceUID)
    if not headers:
        raise NotReviewable(
            f"the analysed series {current.run.SeriesInstanceUID} is no longer in the archive"
        )
    report = build_signed_sr(
        headers,
        reported_nodules(current, characters),
        impression=impression,
        lung_rads=category,
        lung_rads_note=note,
        signature=Signature(actor, facility_of_series(archive, current.run.SeriesInstanceUID), now),
        predecessors=_predecessors(archive, current),
        series_instance_uid=series_uid,
        instance_number=revision,
    )

    # 3. Stored through the one ingest path.
    stored = archive.store(_encode(report), Source("REVIEW", subject=actor))

    # 4. The review final with it, if nobody acted meanwhile.
    signed = SignedReport(
        revision=revision,
        SOPInstanceUID=stored.SOPInstanceUID,
        SeriesInstanceUID=stored.SeriesInstanceUID,
        signed_by=actor,
        signed_at=now,
        impression=impression,
        lung_rads=category,
        lung_rads_note=note,
        nodules=current.reported,
        numbers=nodule_numbers(current),
        analysed_series=current.run.SeriesInstanceUID,
    )
    try:
        record_signature(archive.db, StudyInstanceUID, seen, signed)
    except BaseException:
        _take_back(archive, stored.SOPInstanceUID)
        raise
    with archive.db.read() as conn:
        return load_review(conn, StudyInstanceUID)


def nodule_numbers(current: Review) -> list[int]:
    """Each reported nodule's number: its place in the review's list of findings."""
    number = {f.tracking_uid: n for n, f in enumerate(current.findings, start=1)}
    return [number[f.tracking_uid] for f in current.reported]


def reported_nodules(
    current: Review, characters: Mapping[str, Character] | None = None
) -> list[ReportedNodule]:
    """The confirmed and added nodules, labelled by their place in the review's list; an AI
    nodule whose size the radiologist kept carries its character (type, axes, volume) from
    *characters* (by tracking UID). A corrected size is the radiologist's own measurement:
    the outline's axes and volume no longer describe it, so none go with it."""
    characters = characters or {}

    def kept(f: ReviewedFinding) -> Character | None:
        character = characters.get(f.tracking_uid)
        if f.origin != Origin.AI or character is None:
            return None
        return character if abs(character.mean_diameter_mm - f.diameter_mm) < 0.05 else None

    return [
        ReportedNodule(
            tracking_uid=f.tracking_uid,
            label=f"Nodule {number}",
            x=f.centre.x,
            y=f.centre.y,
            z=f.centre.z,
            diameter_mm=f.diameter_mm,
            probability=f.probability if f.origin == Origin.AI else None,
            added_by_radiologist=f.origin == Origin.RADIOLOGIST,
            character=kept(f),
        )
        for f, number in zip(current.reported, nodule_numbers(current), strict=True)
    ]


def lung_rads_note(current: Review) -> str:
    """How the reported category came about: the radiologist's, or the suggestion (its
    Lung-RADS table row, rule and what it assumed)."""
    suggestion = current.suggestion
    row = f" (Lung-RADS v2022 row {suggestion.row})" if suggestion.row else ""
    if current.lung_rads is not None and current.lung_rads != suggestion.category:
        return (
            f"Category set by the radiologist; the suggestion{row} was "
            f"{suggestion.category} ({suggestion.rule})."
        )
    source = "confirmed by the radiologist" if current.lung_rads else "not changed"
    return f"Suggestion{row}, {source}: {suggestion.rule}. {suggestion.caveat}"


def default_impression(current: Review, category: str) -> str:
    """The impression when the radiologist wrote none: what was confirmed, and the category."""
    nodules = current.reported
    if not nodules:
        found = "No lung nodule confirmed."
    else:
        sizes = ", ".join(f"{f.diameter_mm:.1f} mm" for f in nodules)
        found = f"{len(nodules)} lung nodule(s) confirmed ({sizes})."
    return f"{found} Lung-RADS {category}."


def _predecessors(archive: Archive, current: Review) -> list[Dataset]:
    """The AI SR and the previous signed SR, as far as the archive still holds them (a
    re-run of the AI job supersedes its SR)."""
    uids = [
        current.run.sr_sop_instance_uid if current.run else None,
        current.signed.SOPInstanceUID if current.signed else None,
    ]
    found = [stored_dataset(archive, uid) for uid in uids if uid]
    return [ds for ds in found if ds is not None]


def _encode(ds: Dataset) -> bytes:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _take_back(archive: Archive, SOPInstanceUID: str) -> None:
    try:
        discard_instance(archive, SOPInstanceUID, "its signature lost to a concurrent edit")
    except Exception:  # the index or store is down: fsck finds an orphan blob, and the row
        # (a stored, unreferenced report) is logged here for an operator to remove
        log.exception("could not take back the unrecorded signed report %s", SOPInstanceUID)
