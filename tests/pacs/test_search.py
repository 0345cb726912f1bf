"""The one search of the index (PS3.4 C.2.2.2 matching), on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from pacs.errors import QueryError
from pacs.ingest import Archive, Source
from pacs.search import Level, Query, count_matches, search
from tests.conftest import database_url, make_archive
from tests.dicom import derived, encode
from tests.servers import DATA

SOURCE = Source("IMPORT")


@pytest.fixture(params=["sqlite", "postgresql"], scope="module")
def archive(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Archive]:
    """Three patients: a CT study of two series, an MR study, a CR study."""
    tmp_path = tmp_path_factory.mktemp("search")
    built = make_archive(
        database_url(request.param, tmp_path, request), f"file://{tmp_path / 'storage'}"
    )
    ct_study, mr_study = generate_uid(), generate_uid()
    for number in (1, 2, 3):
        built.store(
            encode(
                derived(
                    PatientID="P-CT",
                    PatientName="Nguyễn^Văn An",
                    SpecificCharacterSet="ISO_IR 192",
                    StudyInstanceUID=ct_study,
                    StudyDate="20240115",
                    StudyTime="101500",
                    AccessionNumber="ACC_100%",
                    StudyDescription="CHEST CT",
                    InstanceNumber=number,
                )
            ),
            SOURCE,
        )
    built.store(
        encode(
            derived(
                PatientID="P-CT",
                PatientName="Nguyễn^Văn An",
                SpecificCharacterSet="ISO_IR 192",
                StudyInstanceUID=ct_study,
                StudyDate="20240115",
                StudyTime="101500",
                AccessionNumber="ACC_100%",
                StudyDescription="CHEST CT",
                SeriesInstanceUID=generate_uid(),
                Modality="SR",
                SeriesNumber=99,
            )
        ),
        SOURCE,
    )
    built.store(
        encode(
            derived(
                DATA / "edge-cases" / "MR_small.dcm",
                PatientID="P-MR",
                PatientName="Doe^John",
                StudyInstanceUID=mr_study,
                StudyDate="20230601",
            )
        ),
        SOURCE,
    )
    built.store((DATA / "cxr" / "cr-chest-mono1" / "CR-MONO1-10-chest.dcm").read_bytes(), SOURCE)
    yield built
    built.db.dispose()


def find(
    archive: Archive, level: Level, returned: tuple[str, ...] = (), **matching: str
) -> list[dict[str, object]]:
    with archive.db.read() as conn:
        return list(search(conn, Query(level, matching, returned)))


def test_universal_matching_returns_every_study(archive: Archive) -> None:
    studies = find(archive, Level.STUDY, ("ModalitiesInStudy", "NumberOfStudyRelatedInstances"))
    assert len(studies) == 3
    ct = next(s for s in studies if s["ModalitiesInStudy"] == "CT\\SR")
    assert ct["NumberOfStudyRelatedInstances"] == 4


def test_single_value_and_wildcards(archive: Archive) -> None:
    assert [p["PatientID"] for p in find(archive, Level.PATIENT, PatientID="P-MR")] == ["P-MR"]
    assert {p["PatientID"] for p in find(archive, Level.PATIENT, PatientID="P-*")} == {
        "P-CT",
        "P-MR",
    }
    assert [p["PatientID"] for p in find(archive, Level.PATIENT, PatientID="P-?R")] == ["P-MR"]
    # SQL's own wild cards in a value are plain characters.
    assert len(find(archive, Level.STUDY, AccessionNumber="ACC_100%")) == 1
    assert find(archive, Level.STUDY, AccessionNumber="ACC_1000") == []
    assert find(archive, Level.STUDY, AccessionNumber="ACCX100%") == []


def test_person_names_match_case_insensitively_in_any_script(archive: Archive) -> None:
    assert len(find(archive, Level.PATIENT, PatientName="doe^john")) == 1
    assert len(find(archive, Level.PATIENT, PatientName="DOE*")) == 1
    [match] = find(archive, Level.PATIENT, ("PatientName",), PatientName="Nguyễn*")
    assert match["PatientName"] == "Nguyễn^Văn An"


def test_date_ranges(archive: Archive) -> None:
    def dates(value: str) -> set[object]:
        return {s["StudyDate"] for s in find(archive, Level.STUDY, ("StudyDate",), StudyDate=value)}

    assert dates("20240101-20241231") == {"20240115"}
    assert dates("-20231231") >= {"20230601"}
    assert "20240115" not in dates("-20231231")
    assert dates("20240115-") == {"20240115"}
    assert dates("20240115") == {"20240115"}
    with pytest.raises(QueryError, match="empty range"):
        dates("-")


def test_uid_lists_and_modalities(archive: Archive) -> None:
    studies = find(archive, Level.STUDY)
    uids = [str(s["StudyInstanceUID"]) for s in studies]
    assert len(find(archive, Level.STUDY, StudyInstanceUID="\\".join(uids[:2]))) == 2
    assert len(find(archive, Level.STUDY, ModalitiesInStudy="SR")) == 1
    assert len(find(archive, Level.STUDY, ModalitiesInStudy="MR\\CR")) == 2
    assert find(archive, Level.STUDY, ModalitiesInStudy="C") == []  # whole values only


def test_series_and_image_levels(archive: Archive) -> None:
    series = find(
        archive, Level.SERIES, ("Modality", "NumberOfSeriesRelatedInstances"), Modality="CT"
    )
    assert [s["NumberOfSeriesRelatedInstances"] for s in series] == [3]
    images = find(
        archive,
        Level.IMAGE,
        ("InstanceNumber",),
        SeriesInstanceUID=str(series[0]["SeriesInstanceUID"]),
    )
    assert sorted(i["InstanceNumber"] for i in images) == [1, 2, 3]
    assert len(find(archive, Level.IMAGE, InstanceNumber="2", Modality="CT")) == 1
    with pytest.raises(QueryError, match="not a number"):
        find(archive, Level.IMAGE, InstanceNumber="two")


def test_keys_below_the_level_are_refused(archive: Archive) -> None:
    with pytest.raises(QueryError, match="below the STUDY level"):
        find(archive, Level.STUDY, Modality="CT")


def test_paging(archive: Archive) -> None:
    with archive.db.read() as conn:
        first = list(search(conn, Query(Level.STUDY, {}, (), limit=2)))
        rest = list(search(conn, Query(Level.STUDY, {}, (), limit=2, offset=2)))
    assert len(first) == 2
    assert len(rest) == 1
    assert {s["StudyInstanceUID"] for s in first}.isdisjoint(s["StudyInstanceUID"] for s in rest)


def test_count_matches_ignores_paging(archive: Archive) -> None:
    with archive.db.read() as conn:
        assert count_matches(conn, Query(Level.STUDY, {}, (), limit=1, offset=1)) == 3
        assert count_matches(conn, Query(Level.IMAGE, {"Modality": "CT"}, (), limit=2)) == 3
        assert count_matches(conn, Query(Level.PATIENT, {"PatientID": "P-*"}, (), limit=0)) == 2
        assert count_matches(conn, Query(Level.SERIES, {"Modality": "XA"}, ())) == 0


def test_search_does_not_depend_on_storage(archive: Archive, tmp_path: Path) -> None:
    # Queries never open a blob: they work with the blobs gone.
    moved = tmp_path / "elsewhere"
    root = Path(archive.blobs.url.removeprefix("file://"))
    root.rename(moved)
    try:
        assert len(find(archive, Level.IMAGE)) == 6
    finally:
        moved.rename(root)
