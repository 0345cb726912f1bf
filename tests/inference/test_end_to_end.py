"""A chest CT sent to the archive becomes findings on its own: real servers, real clients."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import highdicom as hd
import httpx
import numpy as np
import pydicom
import pytest
from dicomweb_client import DICOMwebClient
from sqlalchemy import create_engine, text

from models.luna16 import read_annotations
from tests.dicom import LIDC_0001, dicom_files
from tests.servers import (
    DATA,
    PacsServer,
    PostgresServer,
    dcmtk,
    running,
    stop,
    storescu,
    wait_for,
)

pytestmark = pytest.mark.slow

ANNOTATIONS = DATA / "ct" / "annotations" / "luna16_annotations_LIDC0001-0002.csv"


def findings(server: PacsServer, token: str, study: str) -> dict[str, Any]:
    response = httpx.get(
        f"{server.url}/api/v1/studies/{study}/findings",
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


def _lidc() -> tuple[str, str, list[Any]]:
    first = pydicom.dcmread(dicom_files(LIDC_0001)[0], stop_before_pixels=True)
    return str(first.StudyInstanceUID), str(first.SeriesInstanceUID), first


def test_storescu_to_findings_in_patient_mm(tmp_path: Path) -> None:
    study, series, _ = _lidc()
    server = PacsServer(tmp_path / "home", {"PACS_STABLE_AGE": "1", "PACS_WORKERS": "1"})
    destination = PacsServer(tmp_path / "destination", {"PACS_AE_TITLE": "DEST"})
    with running(server), running(destination):
        token = server.token("radiologist")
        unknown = httpx.get(
            f"{server.url}/api/v1/studies/{study}/findings",
            headers={"Authorization": f"Bearer {token}"},
        )
        assert unknown.status_code == 404
        storescu(server, LIDC_0001)
        document = wait_for(
            lambda: (d := findings(server, token, study))["status"] == "done" and d,
            timeout=180,
            what="the nodule-detection job",
        )
        listing = server.pacs("findings", study).stdout
        # The SR and SEG went into the study: WADO-RS serves them, C-MOVE sends them on.
        results = document["run"]["results"]
        web = DICOMwebClient(
            f"{server.url}/dicom-web", headers={"Authorization": f"Bearer {token}"}
        )
        result_series = {
            modality: [
                s["0020000E"]["Value"][0]
                for s in web.search_for_series(study, search_filters={"Modality": modality})
            ]
            for modality in ("SR", "SEG")
        }
        (sr_series,) = result_series["SR"]
        sr = web.retrieve_instance(study, sr_series, results["SR"])
        server.pacs("ae", "add", "DEST", "127.0.0.1", str(destination.port))
        for (uid,) in (result_series["SR"], result_series["SEG"]):
            subprocess.run(
                [
                    dcmtk("movescu"),
                    "-S",
                    "-aec",
                    "PACS",
                    "-aem",
                    "DEST",
                    "-k",
                    "QueryRetrieveLevel=SERIES",
                    "-k",
                    f"StudyInstanceUID={study}",
                    "-k",
                    f"SeriesInstanceUID={uid}",
                    "127.0.0.1",
                    str(server.port),
                ],
                check=True,
                capture_output=True,
                timeout=120,
            )
        moved = json.loads(destination.pacs("stats", "--json").stdout)
    run = document["run"]
    assert run["outcome"] == "analysed" and run["SeriesInstanceUID"] == series
    assert run["model"]["name"] == "demo-nodule-centernet"
    assert document["findings"], "the demo model reports at least one candidate"
    # Coordinates are patient LPS mm: inside the scanned volume (x, y within the 360 mm field
    # of view around the table centre, z between the first and last slice).
    positions = [
        pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient
        for p in dicom_files(LIDC_0001)
    ]
    z = sorted(float(p[2]) for p in positions)
    x0, y0 = float(positions[0][0]), float(positions[0][1])
    for f in document["findings"]:
        p = f["position_mm"]
        assert x0 <= p["x"] <= x0 + 512 * 0.703125 and y0 <= p["y"] <= y0 + 512 * 0.703125
        assert z[0] - 1 <= p["z"] <= z[-1] + 1
    # The real LUNA16 nodule (23 mm, rated malignant by 4/4 readers) is found.
    (nodule,) = [a for a in read_annotations(ANNOTATIONS) if a.seriesuid == series]
    distances = [
        np.linalg.norm(np.subtract([f["position_mm"][k] for k in "xyz"], nodule.centre))
        for f in document["findings"]
    ]
    assert min(distances) < nodule.diameter_mm / 2
    assert "nodule at (" in listing
    # What highdicom reads back from the SR retrieved over WADO-RS is what the API says.
    report = hd.sr.Comprehensive3DSR.from_dataset(sr)
    groups = report.content.get_volumetric_roi_measurement_groups()
    assert {str(g.tracking_uid) for g in groups} == {
        f["tracking_uid"] for f in document["findings"]
    }
    assert moved["instances"] == 2  # the SR and the SEG, moved by C-MOVE


def test_a_worker_killed_mid_job_loses_nothing(tmp_path: Path) -> None:
    study, _, _ = _lidc()
    server = PacsServer(tmp_path / "home", {"PACS_STABLE_AGE": "1", "PACS_JOB_LEASE_S": "4"})
    worker_log = (tmp_path / "worker.log").open("ab")

    def worker() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "pacs.cli", "worker", "--concurrency", "1"],
            env=server.env,
            stdout=worker_log,
            stderr=subprocess.STDOUT,
        )

    with running(server):
        token = server.token("radiologist")
        first = worker()
        try:
            storescu(server, LIDC_0001)
            wait_for(
                lambda: findings(server, token, study)["status"] == "running",
                timeout=60,
                what="the job to start",
            )
            os.kill(first.pid, signal.SIGKILL)
            first.wait(timeout=10)
            assert findings(server, token, study)["status"] == "running"  # its lease holds it
            second = worker()
            try:
                document = wait_for(
                    lambda: (d := findings(server, token, study))["status"] == "done" and d,
                    timeout=180,
                    what="the job to complete on the second worker",
                )
            finally:
                stop(second)
        finally:
            if first.poll() is None:
                first.kill()
                first.wait()
            worker_log.close()
    assert document["job"]["attempts"] == 2
    engine = create_engine(f"sqlite:///{server.home / 'index.db'}")
    with engine.connect() as conn:
        runs = conn.execute(
            text("SELECT count(*) FROM ai_run WHERE study_instance_uid = :s"), {"s": study}
        ).scalar_one()
        jobs = conn.execute(
            text("SELECT count(*) FROM job WHERE study_instance_uid = :s"), {"s": study}
        ).scalar_one()
    engine.dispose()
    assert (runs, jobs) == (1, 1)


def test_two_servers_on_one_postgres_queue_one_job_per_stable_study(
    tmp_path: Path, postgres: PostgresServer
) -> None:
    url = postgres.new_database()
    shared = {
        "PACS_DATABASE_URL": url,
        "PACS_STORAGE_URL": f"file://{tmp_path / 'storage'}",
        "PACS_STABLE_AGE": "1",
    }
    a = PacsServer(tmp_path / "a", shared)
    b = PacsServer(tmp_path / "b", shared)
    a.pacs("db", "upgrade")
    studies = {}
    with running(a), running(b):
        for server, path in (
            (a, DATA / "edge-cases" / "CT_small.dcm"),
            (b, DATA / "edge-cases" / "MR_small.dcm"),
            (a, DATA / "cxr" / "nih-dx-chest"),
            (b, DATA / "mr" / "siemens-enhanced-t1w"),
        ):
            file = path if path.is_file() else dicom_files(path)[0]
            storescu(server, file)
            studies[str(pydicom.dcmread(file, stop_before_pixels=True).StudyInstanceUID)] = path
        engine = create_engine(url)

        def jobs() -> dict[str, int]:
            with engine.connect() as conn:
                rows = conn.execute(
                    text("SELECT study_instance_uid, count(*) FROM job GROUP BY study_instance_uid")
                ).all()
            return {uid: n for uid, n in rows}

        wait_for(lambda: set(jobs()) >= set(studies), timeout=60, what="a job per study")
        time.sleep(3)  # several more sweeps of both servers
        counted = jobs()
        engine.dispose()
    assert {uid: counted.get(uid) for uid in studies} == dict.fromkeys(studies, 1)
    assert set(counted) == set(studies)
