"""The archive the facility isolation tests run against (tests/viewer_api/test_isolation.py):
studies of two facilities, north and south, one north study shared with south, a served
archive and tokens for each principal."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path

from pydicom.uid import generate_uid
from sqlalchemy import select

from pacs.facilities import Scope, add_facility
from pacs.index import Database, upgrade
from pacs.index.schema import patient, study
from pacs.ingest import Archive, Source
from pacs.jobs import claim_next_job, complete, enqueue
from pacs.results import NODULE_DETECTION, Finding, NewRun, RunOutcome, save_run
from pacs.sharing import share_study
from pacs.storage import open_store
from tests.dicom import derived, encode
from tests.servers import PacsServer, running
from viewer_api.auth import Role, create_token, load_or_create_secret

MARK = "Iso"  # every PatientName of the fixture studies starts with it


@dataclass(frozen=True)
class Stored:
    """A fixture study: its UIDs and the ids the FHIR and review routes name it by."""

    facility: str
    StudyInstanceUID: str
    SeriesInstanceUID: str
    SOPInstanceUIDs: tuple[str, ...]
    PatientID: str
    patient_id: str = ""  # the FHIR Patient id
    run_id: int | None = None  # the AI run (FHIR DiagnosticReport ai-<run>)
    findings: tuple[str, ...] = ()  # tracking UIDs


def _store_study(archive: Archive, facility: str, patient_id: str, name: str) -> Stored:
    """A small study of two CT_small instances (slices 2 mm apart) for *facility*."""
    study_uid, series_uid = str(generate_uid()), str(generate_uid())
    sops = []
    for index in range(2):
        ds = derived(
            StudyInstanceUID=study_uid,
            SeriesInstanceUID=series_uid,
            PatientID=patient_id,
            PatientName=f"{MARK}^{name}",
            InstanceNumber=index + 1,
            ImagePositionPatient=[-60.0, -60.0, -100.0 + 2 * index],
        )
        archive.store(encode(ds), Source("IMPORT", facility=facility))
        sops.append(str(ds.SOPInstanceUID))
    with archive.db.read() as conn:
        fhir_id = conn.execute(
            select(patient.c.fhir_id)
            .join(study, study.c.patient_fk == patient.c.id)
            .where(study.c.study_instance_uid == study_uid)
        ).scalar_one()
    return Stored(facility, study_uid, series_uid, tuple(sops), patient_id, str(fhir_id))


def _analyse(archive: Archive, stored: Stored) -> Stored:
    """A done AI run with two findings on *stored* (no SR: the review needs none)."""
    findings = [Finding(-50.0, -50.0, -99.0, 6.0, 0.9), Finding(-40.0, -45.0, -99.0, 4.0, 0.7)]
    with archive.db.write() as conn:
        enqueue(conn, NODULE_DETECTION, stored.StudyInstanceUID)
    job = claim_next_job(archive.db, "test", [NODULE_DETECTION], timedelta(seconds=60))
    assert job is not None and job.StudyInstanceUID == stored.StudyInstanceUID
    new = NewRun(
        job.id,
        stored.StudyInstanceUID,
        stored.SeriesInstanceUID,
        ("demo-nodule-centernet", "1.0.0"),
        RunOutcome.ANALYSED,
        [],
        findings,
        1.0,
    )
    run_id = save_run(archive.db, new)
    complete(archive.db, job.id, "test", f"ai_run:{run_id}")
    return replace(stored, run_id=run_id, findings=tuple(f.tracking_uid for f in findings))


@dataclass(frozen=True)
class World:
    server: PacsServer
    own: Stored  # north study A, not shared
    shared: Stored  # north study S, shared with south
    north_more: Stored  # a third north study (paging)
    south: Stored  # south study B: the same PatientID as A, another facility's patient
    south_more: Stored
    tokens: dict[str, str]

    @property
    def marked(self) -> list[Stored]:
        return [self.own, self.shared, self.north_more, self.south, self.south_more]


@contextlib.contextmanager
def facility_world(home: Path) -> Iterator[World]:
    """Two facilities' studies (one north study shared with south) in an archive at *home*,
    served; tokens for each principal of the matrix."""
    home.mkdir()
    db = Database(f"sqlite:///{home / 'index.db'}")
    upgrade(db)
    archive = Archive(db, open_store(f"file://{home / 'storage'}", None, None))
    with db.write() as conn:  # as `pacs facility add` registers them
        add_facility(conn, "north", "NORTH")
        add_facility(conn, "south", "SOUTH")
    own = _analyse(archive, _store_study(archive, "north", "MRN-1", "Alice"))
    shared = _analyse(archive, _store_study(archive, "north", "MRN-2", "Shared"))
    north_more = _store_study(archive, "north", "MRN-3", "Carol")
    south = _analyse(archive, _store_study(archive, "south", "MRN-1", "Bob"))
    south_more = _store_study(archive, "south", "MRN-4", "Dave")
    with db.write() as conn:
        share_study(conn, Scope.of(["north"]), shared.StudyInstanceUID, "south", "test")
    db.dispose()
    with running(PacsServer(home)) as pacs:
        # Minted with the secret and claims `pacs token create` uses, without a CLI start each.
        tokens = {"global": pacs.token("admin", facilities=("*",))}
        secret = load_or_create_secret(home)
        for name, role, facilities in (
            ("north", Role.RADIOLOGIST, ["north"]),
            ("south", Role.RADIOLOGIST, ["south"]),
            ("north-modality", Role.MODALITY, ["north"]),
            ("south-modality", Role.MODALITY, ["south"]),
            ("both-modality", Role.MODALITY, ["north", "south"]),
            ("default-modality", Role.MODALITY, []),
        ):
            tokens[name] = create_token(secret, name, [role], 3600, facilities)
        yield World(pacs, own, shared, north_more, south, south_more, tokens)
