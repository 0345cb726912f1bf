"""The one search of the index (PS3.4 C.2.2.2 matching), on SQLite and PostgreSQL."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import generate_uid

from pacs.errors import QueryError
from pacs.facilities import Scope
from pacs.ingest import Archive, Source
from pacs.matching import CHECKED_VRS, MAX_LIST_VALUES, MAX_OTHER_LIST_VALUES
from pacs.search import ATTRIBUTES, Level, count_matches, search
from pacs.search import Query as ScopedQuery
from tests.conftest import database_url, make_archive
from tests.dicom import derived, encode
from tests.servers import DATA


def Query(*args: Any, **kwargs: Any) -> ScopedQuery:
    """A search over every facility (these tests are about matching, not isolation)."""
    return ScopedQuery(*args, scope=Scope.everything(), **kwargs)


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
    times = find(archive, Level.STUDY, ("StudyTime",), StudyTime="10-1015")
    assert {s["StudyTime"] for s in times} == {"101500"}
    later = find(archive, Level.STUDY, ("StudyTime",), StudyTime="1016-")
    assert "101500" not in {s["StudyTime"] for s in later}


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
    with pytest.raises(QueryError, match="InstanceNumber: 'two' is not a number"):
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


@pytest.mark.parametrize(
    ("keyword", "value", "reason"),
    [
        ("StudyDate", "notadate", "'notadate' is not a date (YYYYMMDD)"),
        ("StudyDate", "2024", "'2024' is not a date (YYYYMMDD)"),
        ("StudyDate", "20240230", "is not a date"),
        ("StudyDate", "2024*", "wild card, not allowed in DA"),
        ("StudyDate", "20240101-2024", "is not a date (YYYYMMDD) range"),
        ("StudyTime", "2500", "is not a time"),
        ("StudyTime", "1015.5", "is not a time"),
        ("StudyInstanceUID", "1.2.03", "is not a UID"),
        ("StudyInstanceUID", "1.2.*", "wild card, not allowed in UI"),
        ("StudyInstanceUID", "1.2.3\\abc", "'abc' is not a UID"),
        ("InstanceNumber", "1" * 40, "out of the IS range"),
        ("InstanceNumber", "2147483648", "out of the IS range"),
        ("InstanceNumber", "1*", "wild card, not allowed in IS"),
        ("Rows", "65536", "out of the US range (0 to 65535)"),
        ("Rows", "-1", "out of the US range"),
        ("PatientName", "A^B^C^D^E^F", "more than 5 name components"),
        ("PatientName", "A=B=C=D", "more than 3 component groups"),
        ("PatientName", "X" * 65, "longer than 64 characters"),
        ("Modality", "ct", "not a code string"),
        ("Modality", "C" * 17, "longer than 16 characters (CS)"),
        ("AccessionNumber", "A" * 17, "longer than 16 characters (SH)"),
        ("StudyDescription", "D" * 65, "longer than 64 characters (LO)"),
        ("PatientID", "P\x01", "control character"),
    ],
)
def test_malformed_matching_values_are_refused_with_key_and_reason(
    keyword: str, value: str, reason: str
) -> None:
    with pytest.raises(QueryError, match=f"^{keyword}: .*{re.escape(reason)}"):
        Query(Level.IMAGE, {keyword: value}, ())


def test_every_searchable_vr_is_checked() -> None:
    assert {a.vr for a in ATTRIBUTES.values()} <= CHECKED_VRS


def test_valid_values_and_universal_matching_pass() -> None:
    query = Query(
        Level.IMAGE,
        {
            "StudyDate": "20240101-",
            "StudyTime": "101500.123456",
            "StudyInstanceUID": "1.2.3,1.2.4",  # QIDO-RS clients separate UIDs with commas
            "InstanceNumber": "-5",
            "PatientName": "Doe^J*=ド^ジ",
            "Modality": "",  # universal
            "SeriesDescription": "*",  # universal
        },
        (),
    )
    assert query.matching["StudyInstanceUID"] == "1.2.3\\1.2.4"
    assert "Modality" not in query.matching and "SeriesDescription" not in query.matching


def test_long_lists_run_and_too_long_lists_name_the_limit(archive: Archive) -> None:
    studies = [str(s["StudyInstanceUID"]) for s in find(archive, Level.STUDY)]
    many = [f"1.2.826.0.1.{n}" for n in range(MAX_LIST_VALUES - len(studies))] + studies
    assert len(find(archive, Level.STUDY, StudyInstanceUID="\\".join(many))) == 3
    with pytest.raises(QueryError, match=f"1200 values, at most {MAX_LIST_VALUES} allowed"):
        find(archive, Level.STUDY, StudyInstanceUID="\\".join(many + many[:200]))
    # Lists of other values (of patterns, of ranges) are an OR each: shorter.
    names = "\\".join([f"N{n}*" for n in range(MAX_OTHER_LIST_VALUES - 1)] + ["doe*"])
    assert len(find(archive, Level.PATIENT, PatientName=names)) == 1
    dates = "\\".join([f"2000{n:04d}-" for n in range(101, 101 + MAX_OTHER_LIST_VALUES)])
    with pytest.raises(QueryError, match=f"at most {MAX_OTHER_LIST_VALUES} allowed"):
        find(archive, Level.STUDY, StudyDate=f"{dates}\\20240101")
    numbers = "\\".join(str(n) for n in range(MAX_OTHER_LIST_VALUES))
    assert len(find(archive, Level.IMAGE, InstanceNumber=numbers)) >= 3


def test_computed_attributes_count_at_every_level(archive: Archive) -> None:
    [ct] = find(
        archive,
        Level.PATIENT,
        (
            "NumberOfPatientRelatedStudies",
            "NumberOfPatientRelatedSeries",
            "NumberOfPatientRelatedInstances",
        ),
        PatientID="P-CT",
    )
    assert ct["NumberOfPatientRelatedStudies"] == 1
    assert ct["NumberOfPatientRelatedSeries"] == 2  # the CT series and the SR series
    assert ct["NumberOfPatientRelatedInstances"] == 4
    [study] = find(
        archive,
        Level.STUDY,
        (
            "NumberOfStudyRelatedSeries",
            "NumberOfStudyRelatedInstances",
            "ModalitiesInStudy",
            "SOPClassesInStudy",
        ),
        PatientID="P-CT",
    )
    assert study["NumberOfStudyRelatedSeries"] == 2
    assert study["NumberOfStudyRelatedInstances"] == 4
    assert study["ModalitiesInStudy"] == "CT\\SR"
    with archive.db.read() as conn:
        images = search(conn, Query(Level.IMAGE, {"PatientID": "P-CT"}, ("SOPClassUID",)))
        classes = {str(i["SOPClassUID"]) for i in images}
    assert set(str(study["SOPClassesInStudy"]).split("\\")) == classes
    some_class = next(iter(classes))
    matched = find(archive, Level.STUDY, SOPClassesInStudy=f"1.2.3\\{some_class}")
    assert study["StudyInstanceUID"] in {s["StudyInstanceUID"] for s in matched}
    series = find(archive, Level.SERIES, ("NumberOfSeriesRelatedInstances",), PatientID="P-CT")
    assert sorted(int(str(s["NumberOfSeriesRelatedInstances"])) for s in series) == [1, 3]


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
