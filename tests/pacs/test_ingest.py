"""The one ingest path, on every storage backend x index database."""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from io import BytesIO

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from sqlalchemy import select

from pacs.errors import (
    ForeignStudy,
    IndexUnavailable,
    InstanceConflict,
    InvalidInstance,
    ReplaceRefused,
    SOPClassMismatch,
)
from pacs.index import Outcome, changes, counts
from pacs.index.schema import instance, instance_version, patient, series, study
from pacs.ingest import Archive, Source
from pacs.part10 import FramedDigest, framed_digest, with_meta
from pacs.versions import purge_expired, versions_of
from tests.dicom import CT_SMALL, MR_SMALL, dataset_bytes, derived, encode
from tests.servers import DATA

DIMSE = Source("DIMSE", calling_ae="MODALITY", remote_host="127.0.0.1")


def blobs(archive: Archive) -> dict[str, bytes]:
    return {entry.key: archive.blobs.get(entry.key) for entry in archive.blobs.list()}


def rows(archive: Archive, table: object) -> list[dict[str, object]]:
    with archive.db.read() as conn:
        return [dict(row._mapping) for row in conn.execute(select(table))]  # type: ignore[call-overload]


def assert_empty(archive: Archive) -> None:
    with archive.db.read() as conn:
        assert counts(conn).instances == 0
        assert changes(conn) == []
    assert blobs(archive) == {}


def test_part10_file_is_stored_as_received_and_indexed(archive: Archive) -> None:
    data = CT_SMALL.read_bytes()
    source = pydicom.dcmread(CT_SMALL)
    result = archive.store(data, DIMSE)

    assert result.outcome is Outcome.STORED
    assert blobs(archive) == {result.blob_key: data}
    assert result.sha256 == hashlib.sha256(data).hexdigest()
    [row] = rows(archive, instance)
    assert row["sop_instance_uid"] == source.SOPInstanceUID
    assert row["sop_class_uid"] == source.SOPClassUID
    assert row["transfer_syntax_uid"] == ExplicitVRLittleEndian
    assert (row["rows"], row["columns"]) == (128, 128)
    assert row["size"] == len(data)
    assert row["calling_ae"] == "MODALITY"
    assert row["source"] == "DIMSE"
    [study_row] = rows(archive, study)
    assert study_row["study_date"] == source.StudyDate
    assert study_row["modalities_in_study"] == "CT"
    assert study_row["last_received_at"] is not None
    [patient_row] = rows(archive, patient)
    assert patient_row["patient_id"] == source.PatientID
    with archive.db.read() as conn:
        [change] = changes(conn)
    assert (change.kind, change.SOPInstanceUID) == ("instance.stored", source.SOPInstanceUID)
    assert change.detail["sha256"] == result.sha256


def test_bare_data_set_is_framed_without_re_encoding(archive: Archive) -> None:
    body = dataset_bytes(CT_SMALL.read_bytes())
    result = archive.store(body, DIMSE, transfer_syntax_uid=ExplicitVRLittleEndian)
    stored = archive.blobs.get(result.blob_key)
    assert stored.endswith(body)
    assert dataset_bytes(stored) == body
    meta = pydicom.dcmread(BytesIO(stored)).file_meta
    assert meta.MediaStorageSOPInstanceUID == pydicom.dcmread(CT_SMALL).SOPInstanceUID


def test_a_digest_taken_on_arrival_is_used_only_for_the_blob_it_describes(
    archive: Archive,
) -> None:
    ct = pydicom.dcmread(CT_SMALL)
    sop = str(ct.SOPClassUID), str(ct.SOPInstanceUID)
    body = dataset_bytes(CT_SMALL.read_bytes())
    digest = framed_digest(*sop, ExplicitVRLittleEndian)
    digest.update(body)
    framed = FramedDigest(*sop, ExplicitVRLittleEndian, digest.hexdigest())
    assert (
        framed.sha256 == hashlib.sha256(with_meta(body, *sop, ExplicitVRLittleEndian)).hexdigest()
    )
    result = archive.store(body, DIMSE, ExplicitVRLittleEndian, announced=sop, framed=framed)
    assert result.sha256 == framed.sha256
    assert hashlib.sha256(archive.blobs.get(result.blob_key)).hexdigest() == framed.sha256
    # Not for a blob other than our meta + these bytes: a Part 10 file kept as received, or
    # a digest made for another transfer syntax or instance.
    other = derived(MR_SMALL)  # a new instance each: nothing here replaces another
    part10, bare = derived(MR_SMALL), dataset_bytes(encode(other))
    wrong = [
        (encode(part10), None, replace(framed, SOPInstanceUID=part10.SOPInstanceUID)),
        (bare, ExplicitVRLittleEndian, replace(
            framed, SOPClassUID=other.SOPClassUID, SOPInstanceUID=other.SOPInstanceUID,
            TransferSyntaxUID="1.2.840.10008.1.2")),
    ]  # fmt: skip
    for data, syntax, hint in wrong:
        result = archive.store(data, DIMSE, syntax, framed=hint)
        assert result.sha256 == hashlib.sha256(archive.blobs.get(result.blob_key)).hexdigest()
        assert result.sha256 != framed.sha256


def test_file_without_meta_gets_meta_and_keeps_its_data_set(archive: Archive) -> None:
    path = DATA / "cxr" / "cr-chest-mono1" / "CR-MONO1-10-chest.dcm"
    data = path.read_bytes()
    result = archive.store(data, Source("IMPORT"))
    stored = archive.blobs.get(result.blob_key)
    assert stored[128:132] == b"DICM"
    assert stored.endswith(data)  # the whole file was a data set
    assert result.TransferSyntaxUID == "1.2.840.10008.1.2"


def test_same_bytes_again_is_one_instance(archive: Archive) -> None:
    data = CT_SMALL.read_bytes()
    first = archive.store(data, DIMSE)
    second = archive.store(data, DIMSE)
    assert (first.outcome, second.outcome) == (Outcome.STORED, Outcome.DUPLICATE)
    assert len(blobs(archive)) == 1
    assert len(rows(archive, instance)) == 1
    with archive.db.read() as conn:
        assert len(changes(conn)) == 1


def test_new_bytes_from_a_source_that_may_not_replace_store_nothing(archive: Archive) -> None:
    ds = derived()
    first = archive.store(encode(ds), DIMSE)
    ds.PixelData = bytes(len(ds.PixelData))  # a "new version" with its pixels zeroed
    with pytest.raises(ReplaceRefused, match="replace permission") as refused:
        archive.store(encode(ds), DIMSE)

    assert refused.value.keyword is None
    assert list(blobs(archive)) == [first.blob_key]  # no orphan of the refused version
    [row] = rows(archive, instance)
    assert row["sha256"] == first.sha256
    assert rows(archive, instance_version) == []
    with archive.db.read() as conn:
        assert [c.kind for c in changes(conn)] == ["instance.stored"]


def test_a_permitted_replacement_keeps_the_superseded_version(archive: Archive) -> None:
    ds = derived()
    first = archive.store(encode(ds), DIMSE)
    ds.PatientName = "Corrected^Name"
    admin = Source("STOW", remote_host="10.0.0.5", may_replace=True, subject="admin")
    second = archive.store(encode(ds), admin)

    assert second.outcome is Outcome.REPLACED
    assert second.blob_key != first.blob_key
    assert blobs(archive) == {
        first.blob_key: archive.blobs.get(first.blob_key),  # kept, not deleted
        second.blob_key: encode(ds),
    }
    [row] = rows(archive, instance)
    assert (row["sha256"], row["source"]) == (second.sha256, "STOW")
    [kept] = rows(archive, instance_version)
    assert (kept["blob_key"], kept["sha256"], kept["size"]) == (
        first.blob_key,
        first.sha256,
        first.size,
    )
    assert (kept["source"], kept["calling_ae"]) == ("DIMSE", "MODALITY")
    assert kept["superseded_by"] == "STOW admin@10.0.0.5"
    retention = kept["keep_until"] - kept["superseded_at"]
    assert retention == archive.version_retention == timedelta(days=365)
    [patient_row] = rows(archive, patient)
    assert patient_row["patient_name"] == "Corrected^Name"  # an admin's correction wins
    with archive.db.read() as conn:
        kinds = [(c.kind, c.detail.get("previous_sha256")) for c in changes(conn)]
        listed = versions_of(conn, first.SOPInstanceUID)
    assert kinds == [("instance.stored", None), ("instance.replaced", first.sha256)]
    assert [(v.sha256, v.current) for v in listed] == [
        (second.sha256, True),
        (first.sha256, False),
    ]


def test_expired_versions_are_purged_and_current_blobs_stay(embedded_archive: Archive) -> None:
    archive = embedded_archive
    admin = Source("STOW", may_replace=True)
    ds = derived()
    v1 = archive.store(encode(ds), DIMSE)
    ds.SeriesDescription = "second"
    v2 = archive.store(encode(ds), admin)
    del ds.SeriesDescription
    assert archive.store(encode(ds), admin).blob_key == v1.blob_key  # v1 stored back

    assert purge_expired(archive, datetime.now(UTC)) == 0  # nothing expired yet
    assert purge_expired(archive, datetime.now(UTC) + timedelta(days=366)) == 2
    assert rows(archive, instance_version) == []
    # v2's blob went; v1's stays: it is the current version again.
    assert list(blobs(archive)) == [v1.blob_key]
    assert v2.blob_key not in blobs(archive)


def test_a_different_patient_name_for_a_stored_patient_is_refused(archive: Archive) -> None:
    first = derived()
    archive.store(encode(first), DIMSE)
    renamed = derived(PatientName="Someone^Else")  # a new instance of the same study
    with pytest.raises(ReplaceRefused, match="PatientName") as refused:
        archive.store(encode(renamed), DIMSE)

    assert refused.value.keyword == "PatientName"
    [patient_row] = rows(archive, patient)
    assert patient_row["patient_name"] == str(first.PatientName)
    assert len(rows(archive, instance)) == 1
    assert len(blobs(archive)) == 1  # the refused instance's blob was discarded


@pytest.mark.parametrize(
    ("keyword", "value"),
    [("PatientBirthDate", "19990101"), ("PatientSex", "F"), ("AccessionNumber", "OTHER-1")],
)
def test_other_identity_attributes_are_refused_too(
    embedded_archive: Archive, keyword: str, value: str
) -> None:
    stored = {"PatientBirthDate": "19500101", "PatientSex": "M", "AccessionNumber": "A-1"}
    embedded_archive.store(encode(derived(**stored)), DIMSE)
    with pytest.raises(ReplaceRefused) as refused:
        embedded_archive.store(encode(derived(**(stored | {keyword: value}))), DIMSE)
    assert refused.value.keyword == keyword


def test_blank_and_format_only_differences_are_no_change(embedded_archive: Archive) -> None:
    archive = embedded_archive
    archive.store(encode(derived(PatientName="DOE^JOHN", PatientSex="M")), DIMSE)
    archive.store(encode(derived(PatientName="Doe^John^^^ ", PatientSex="")), DIMSE)
    archive.store(encode(derived(PatientName="", PatientSex=" m")), DIMSE)

    [patient_row] = rows(archive, patient)
    assert (patient_row["patient_name"], patient_row["patient_sex"]) == ("DOE^JOHN", "M")
    assert len(rows(archive, instance)) == 3


def test_patients_without_a_patient_id_are_not_compared(embedded_archive: Archive) -> None:
    """Instances without PatientID share one patient row that identifies no one."""
    archive = embedded_archive
    archive.store(encode(derived(PatientID="", PatientName="^^^^")), DIMSE)  # blank
    archive.store(encode(derived(PatientID="", PatientName="Anonymized")), DIMSE)
    archive.store(encode(derived(PatientID="", PatientName="Test^S R")), DIMSE)
    assert len(rows(archive, instance)) == 3
    [patient_row] = rows(archive, patient)
    assert patient_row["patient_name"] == "^^^^"  # as first stored, never renamed


def test_our_own_results_never_rename_and_are_never_refused(embedded_archive: Archive) -> None:
    archive = embedded_archive
    archive.store(encode(derived(PatientName="Doe^John")), DIMSE)
    archive.store(encode(derived(PatientName="Stale^Name")), Source("AI"))
    [patient_row] = rows(archive, patient)
    assert patient_row["patient_name"] == "Doe^John"
    assert len(rows(archive, instance)) == 2


def test_a_permitted_source_corrects_the_patient_for_the_whole_study(
    embedded_archive: Archive,
) -> None:
    archive = embedded_archive
    archive.store(encode(derived(PatientName="Wrong^Name")), DIMSE)
    corrector = Source("DIMSE", calling_ae="ADMIN_WS", may_replace=True)
    archive.store(encode(derived(PatientName="Right^Name")), corrector)
    [patient_row] = rows(archive, patient)
    assert patient_row["patient_name"] == "Right^Name"
    # ... and the modality's stale name is refused from now on.
    with pytest.raises(ReplaceRefused):
        archive.store(encode(derived(PatientName="Wrong^Name")), DIMSE)


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: data[:-100],  # truncated
        lambda data: b"not dicom at all",
        lambda data: encode(derived(StudyInstanceUID="1.2.03")),  # invalid UID
    ],
    ids=["truncated", "garbage", "invalid-uid"],
)
def test_invalid_input_stores_nothing(archive: Archive, damage: object) -> None:
    with pytest.raises(InvalidInstance):
        archive.store(damage(CT_SMALL.read_bytes()), DIMSE)  # type: ignore[operator]
    assert_empty(archive)


def test_data_set_other_than_announced_stores_nothing(archive: Archive) -> None:
    ds = pydicom.dcmread(CT_SMALL)
    with pytest.raises(SOPClassMismatch):
        archive.store(encode(ds), DIMSE, announced=(ds.SOPClassUID, generate_uid()))
    assert_empty(archive)


def test_conflicting_hierarchy_is_refused(archive: Archive) -> None:
    first = derived()
    archive.store(encode(first), DIMSE)
    # The same series UID under another study.
    with pytest.raises(InstanceConflict, match="belongs to another study"):
        archive.store(encode(derived(StudyInstanceUID=generate_uid())), DIMSE)
    # The same study UID for another patient.
    other_patient = derived(PatientID="SOMEONE-ELSE", SeriesInstanceUID=generate_uid())
    with pytest.raises(InstanceConflict, match="another patient"):
        archive.store(encode(other_patient), DIMSE)
    # The same SOP Instance UID in another series of the study.
    moved = derived(SOPInstanceUID=first.SOPInstanceUID, SeriesInstanceUID=generate_uid())
    with pytest.raises(InstanceConflict, match="already stored in series"):
        archive.store(encode(moved), DIMSE)
    assert len(rows(archive, instance)) == 1
    assert len(blobs(archive)) == 1


def test_failed_commit_acknowledges_nothing_and_discards_the_blob(
    archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Failure injection: the index transaction fails after the blob was written.
    def fail(*args: object) -> None:
        raise IndexUnavailable("index transaction failed: injected")

    monkeypatch.setattr("pacs.ingest.record_instance", fail)
    with pytest.raises(IndexUnavailable):
        archive.store(CT_SMALL.read_bytes(), DIMSE)
    assert_empty(archive)


def test_modalities_in_study_follow_its_series(archive: Archive) -> None:
    ct = derived()
    archive.store(encode(ct), DIMSE)
    sr = derived(SeriesInstanceUID=generate_uid(), Modality="SR")
    archive.store(encode(sr), DIMSE)
    [study_row] = rows(archive, study)
    assert study_row["modalities_in_study"] == "CT\\SR"
    assert len(rows(archive, series)) == 2


def test_unicode_names_survive_the_index(archive: Archive) -> None:
    name = "Nguyễn^Thị Minh Khai"
    archive.store(encode(derived(SpecificCharacterSet="ISO_IR 192", PatientName=name)), DIMSE)
    [patient_row] = rows(archive, patient)
    assert patient_row["patient_name"] == name


def test_concurrent_stores_of_one_new_study(archive: Archive) -> None:
    template = derived()
    instances = [
        encode(derived(SOPInstanceUID=generate_uid(), InstanceNumber=i)) for i in range(24)
    ]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda data: archive.store(data, DIMSE), instances))
    assert {r.outcome for r in results} == {Outcome.STORED}
    assert len(rows(archive, study)) == 1
    assert len(rows(archive, series)) == 1
    assert len(rows(archive, instance)) == 24
    assert template.StudyInstanceUID == results[0].StudyInstanceUID


def test_a_second_facility_keeps_its_own_patients(archive: Archive) -> None:
    archive.store(MR_SMALL.read_bytes(), Source("DIMSE", facility="north"))
    [row] = rows(archive, instance)
    assert row["facility_id"] == archive.facility_id("north")
    assert row["facility_id"] != archive.facility_id(archive.default_facility)


def test_an_instance_of_another_facilitys_study_stores_nothing(archive: Archive) -> None:
    first = derived()
    archive.store(encode(first), Source("DIMSE", facility="north"))
    before = blobs(archive), rows(archive, instance), rows(archive, patient)
    later = derived()  # a new instance of the same study and series
    for data in (encode(first), encode(later)):  # the same bytes again, or new ones
        with pytest.raises(ForeignStudy, match="another facility than south"):
            archive.store(data, Source("STOW", facility="south"))
    assert (blobs(archive), rows(archive, instance), rows(archive, patient)) == before
    # Without a facility (AI results, signed reports) an instance joins its study's facility.
    archive.store(encode(later), Source("AI"))
    assert {row["facility_id"] for row in rows(archive, patient)} == {archive.facility_id("north")}


def test_a_stale_series_hint_falls_back_to_a_full_upsert(archive: Archive) -> None:
    first = derived()
    archive.store(encode(first), DIMSE)
    with archive.db.write() as conn:  # what fsck --repair does when the only blob is gone
        for table in ("change", "instance", "series", "study"):
            conn.exec_driver_sql(f"DELETE FROM {table}")  # noqa: S608 - fixed table names
    # Another study may now get the freed row ids (SQLite reuses them).
    other = derived(StudyInstanceUID=generate_uid(), SeriesInstanceUID=generate_uid())
    archive.store(encode(other), DIMSE)
    again = derived(SOPInstanceUID=generate_uid())  # same series and attributes as `first`
    archive.store(encode(again), DIMSE)
    with archive.db.read() as conn:
        placed = conn.execute(
            select(series.c.series_instance_uid, study.c.study_instance_uid)
            .join(instance, instance.c.series_fk == series.c.id)
            .join(study, study.c.id == series.c.study_fk)
            .where(instance.c.sop_instance_uid == again.SOPInstanceUID)
        ).one()
    assert tuple(placed) == (first.SeriesInstanceUID, first.StudyInstanceUID)
