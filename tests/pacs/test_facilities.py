"""Facility scopes and sharing grants in the index (pacs.facilities, pacs.sharing)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import update

from pacs.errors import InstanceConflict, InvalidFacility
from pacs.facilities import (
    Scope,
    add_facility,
    facility_of_ae_title,
    list_facilities,
    study_facility,
    visible_study,
)
from pacs.index.schema import study_share
from pacs.ingest import Archive, Source
from pacs.search import Level, Query, count_matches, search
from pacs.sharing import revoke_share, share_study, study_shares
from tests.conftest import database_url, make_archive
from tests.dicom import derived, encode

NORTH, SOUTH = Scope.of({"north"}), Scope.of({"south"})


@pytest.fixture(params=["sqlite", "postgresql"])
def two_facilities(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[Archive, str, str]]:
    """A study of facility north (patient P-N) and one of south (patient P-S)."""
    archive = make_archive(
        database_url(request.param, tmp_path, request), f"file://{tmp_path / 'storage'}"
    )
    with archive.db.write() as conn:
        add_facility(conn, "north", "NORTH_AE")
        add_facility(conn, "south", "SOUTH_AE")
    north, south = generate_uid(), generate_uid()
    for uid, patient, name in ((north, "P-N", "north"), (south, "P-S", "south")):
        ds = derived(
            PatientID=patient,
            PatientName="DOE^JANE",
            StudyInstanceUID=uid,
            SeriesInstanceUID=generate_uid(),
        )
        archive.store(encode(ds), Source("IMPORT", facility=name))
    yield archive, north, south
    archive.db.dispose()


def studies(archive: Archive, scope: Scope, **matching: str) -> set[str]:
    query = Query(Level.STUDY, matching, (), scope=scope)
    with archive.db.read() as conn:
        return {row["StudyInstanceUID"] for row in search(conn, query)}


def test_each_scope_sees_only_its_facility(two_facilities: tuple[Archive, str, str]) -> None:
    archive, north, south = two_facilities
    assert studies(archive, NORTH, PatientName="*") == {north}
    assert studies(archive, SOUTH) == {south}
    assert studies(archive, Scope.everything()) == {north, south}
    assert studies(archive, Scope.of(())) == set()
    # A UID list spanning both facilities matches only the visible one.
    assert studies(archive, NORTH, StudyInstanceUID=f"{north}\\{south}") == {north}
    with archive.db.read() as conn:
        assert visible_study(conn, NORTH, south) is None
        assert visible_study(conn, NORTH, north) is not None
        assert study_facility(conn, south) == "south"
        query = Query(Level.PATIENT, {"PatientName": "DOE*"}, ("PatientID",), scope=NORTH)
        assert [row["PatientID"] for row in search(conn, query)] == ["P-N"]
        assert count_matches(conn, Query(Level.IMAGE, {}, (), scope=SOUTH)) == 1


def test_a_grant_shares_one_study_until_revoked_or_expired(
    two_facilities: tuple[Archive, str, str],
) -> None:
    archive, north, south = two_facilities
    with archive.db.write() as conn:
        grant = share_study(conn, SOUTH, south, "north", "dr-south")
    assert grant.facility == "north" and grant.live(datetime.now(UTC))
    assert studies(archive, NORTH) == {north, south}
    with archive.db.read() as conn:  # the patient of a shared study is visible too
        query = Query(Level.PATIENT, {}, ("PatientID",), scope=NORTH)
        assert {row["PatientID"] for row in search(conn, query)} == {"P-N", "P-S"}
        assert [s.id for s in study_shares(conn, NORTH, south)] == [grant.id]

    with archive.db.write() as conn:
        revoked = revoke_share(conn, SOUTH, grant.id, "dr-south")
    assert revoked.revoked_by == "dr-south" and not revoked.live(datetime.now(UTC))
    assert studies(archive, NORTH) == {north}

    with archive.db.write() as conn:
        later = share_study(
            conn, SOUTH, south, "north", "dr-south", datetime.now(UTC) + timedelta(days=1)
        )
    assert studies(archive, NORTH) == {north, south}
    with archive.db.write() as conn:  # a day passes
        conn.execute(
            update(study_share)
            .where(study_share.c.id == later.id)
            .values(until=datetime.now(UTC) - timedelta(seconds=1))
        )
    assert studies(archive, NORTH) == {north}


def test_a_grant_ends_at_its_time_for_a_scope_whose_condition_was_built_before(
    two_facilities: tuple[Archive, str, str],
) -> None:
    """A scope's condition is built once per set of facilities (pacs.facilities._visible_in);
    the time a grant's end is compared with is when each search runs, not when it was built."""
    archive, north, south = two_facilities
    with archive.db.write() as conn:
        share_study(conn, SOUTH, south, "north", "dr", datetime.now(UTC) + timedelta(seconds=1.5))
    scope = Scope.of({"north"})
    assert studies(archive, scope) == {north, south}
    time.sleep(1.6)
    assert studies(archive, scope) == {north}
    assert studies(archive, Scope.of({"north"})) == {north}


def test_grants_are_refused_when_they_cannot_be_right(
    two_facilities: tuple[Archive, str, str],
) -> None:
    archive, _, south = two_facilities
    with archive.db.write() as conn:
        with pytest.raises(LookupError):  # north cannot share what it cannot see
            share_study(conn, NORTH, south, "north", "dr-north")
        with pytest.raises(InvalidFacility, match="no facility"):
            share_study(conn, SOUTH, south, "east", "dr-south")
        with pytest.raises(InvalidFacility, match="already belongs"):
            share_study(conn, SOUTH, south, "south", "dr-south")
        with pytest.raises(InvalidFacility, match="not in the future"):
            share_study(conn, SOUTH, south, "north", "x", datetime.now(UTC) - timedelta(1))
        grant = share_study(conn, SOUTH, south, "north", "dr-south")
        with pytest.raises(LookupError):  # only a scope that sees the study may revoke
            revoke_share(conn, Scope.of({"east"}), grant.id, "someone")


def test_registry_and_ae_titles(two_facilities: tuple[Archive, str, str]) -> None:
    archive, _, _ = two_facilities
    with archive.db.write() as conn:
        assert facility_of_ae_title(conn, "SOUTH_AE") == "south"
        assert facility_of_ae_title(conn, "PACS") is None
        with pytest.raises(InvalidFacility, match="already belongs"):
            add_facility(conn, "east", "SOUTH_AE")
        for bad in ("", "a,b", "*", " x", "x" * 65):
            with pytest.raises(InvalidFacility):
                add_facility(conn, bad, None)
        with pytest.raises(InvalidFacility, match="AE title"):
            add_facility(conn, "east", "BAD\\AE")
        add_facility(conn, "east", None)
        names = {f.name: f.ae_title for f in list_facilities(conn)}
    assert names == {"east": None, "north": "NORTH_AE", "south": "SOUTH_AE"}


def test_a_study_stays_with_its_facility(two_facilities: tuple[Archive, str, str]) -> None:
    """Another facility cannot add instances to (or take over) a study it does not own, and
    results stored without a facility join their study's."""
    archive, north, south = two_facilities
    series = generate_uid()
    intruder = derived(
        PatientID="P-S", PatientName="DOE^JANE", StudyInstanceUID=south, SeriesInstanceUID=series
    )
    with pytest.raises(InstanceConflict):
        archive.store(encode(intruder), Source("STOW", facility="north"))
    assert studies(archive, NORTH) == {north}
    result = derived(
        PatientID="P-S", PatientName="DOE^JANE", StudyInstanceUID=south, SeriesInstanceUID=series
    )
    archive.store(encode(result), Source("AI"))
    assert studies(archive, SOUTH) == {south}
    with archive.db.read() as conn:
        assert count_matches(conn, Query(Level.IMAGE, {}, (), scope=SOUTH)) == 2
