"""Inputs the fuzzer found a bug with (tests/fuzz/regressions/), replayed. ``refused-*.dcm``
must be refused with a reason (InvalidInstance in process, 0xC000 by C-STORE, a 409 with
FailureReason 0xC000 by STOW-RS) and nothing of it stored; ``stored-*.dcm`` are stored as
received (pacs.instance: malformed optional values do not lose an instance) and must be served.

- ``refused-deep-defined-length-sequences.dcm``: CT_small.dcm with a Content Sequence nested
  1,000 items deep, every length defined. The Part 10 check bounded only undefined-length
  nesting, so it was stored; WADO-RS ``/metadata`` then failed with a 500 (RecursionError in
  pydicom's DICOM JSON encoder) and the keep-alive connection was dropped.
- ``stored-ds-with-an-empty-value.dcm``: CT_small.dcm whose Pixel Spacing is
  ``0\\0\\...\\`` (an empty last DS value). Stored, as such instances are; WADO-RS
  ``/metadata`` of its study, series or instance then failed with a 500 (pydicom cannot
  convert the DS to a JSON number). The element is now left out of the metadata, with a
  warning in the log.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest

from bench.fuzzing.senders import multipart
from pacs.dimse import status
from pacs.errors import InvalidInstance
from pacs.index import Database, upgrade
from pacs.index.queries import counts
from pacs.index.records import stored_version
from pacs.ingest import Archive, Source
from pacs.metadata import instance_json
from pacs.storage import open_store
from tests.dicom import store_statuses
from tests.fuzz.conftest import REGRESSIONS
from tests.servers import PacsServer

REFUSED = sorted(REGRESSIONS.glob("refused-*.dcm"))
STORED = sorted(REGRESSIONS.glob("stored-*.dcm"))


def test_there_are_regressions_to_replay() -> None:
    assert REFUSED and STORED
    assert {p.name for p in REGRESSIONS.iterdir()} == {p.name for p in REFUSED + STORED}


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[Archive]:
    db = Database(f"sqlite:///{tmp_path / 'index.db'}")
    upgrade(db)
    yield Archive(db, open_store(f"file://{tmp_path / 'storage'}"))
    db.dispose()


@pytest.mark.parametrize("path", REFUSED, ids=lambda p: p.name)
def test_refused_in_process(archive: Archive, path: Path) -> None:
    with pytest.raises(InvalidInstance) as refused:
        archive.store(path.read_bytes(), Source("STOW", subject="fuzz"))
    assert str(refused.value)
    with archive.db.read() as conn:
        assert counts(conn).instances == 0
    assert list(archive.blobs.list()) == []


@pytest.mark.parametrize("path", STORED, ids=lambda p: p.name)
def test_stored_in_process_and_its_metadata_built(archive: Archive, path: Path) -> None:
    result = archive.store(path.read_bytes(), Source("STOW", subject="fuzz"))
    document = instance_json(archive.blobs.get(result.blob_key), lambda *uids: "bulk")
    assert document["00080018"]["Value"] == [result.SOPInstanceUID]
    assert "00280030" not in document  # the malformed DS: left out, not a failure


def _post(client: httpx.Client, path: Path) -> httpx.Response:
    body, content_type = multipart([path.read_bytes()])
    return client.post("/dicom-web/studies", content=body, headers={"Content-Type": content_type})


def test_replayed_by_c_store_and_stow_rs(fuzz_server: PacsServer) -> None:
    statuses = store_statuses(fuzz_server.port, REFUSED, calling_aet="FUZZ_REPLAY")
    assert set(statuses.values()) == {status.CANNOT_UNDERSTAND}
    with fuzz_server.client("modality") as client:
        for path in REFUSED:
            response = _post(client, path)
            assert response.status_code == 409, response.text
            assert response.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0xC000]
            assert "nested too deeply" in response.headers["Warning"]
        stored = [_post(client, path) for path in STORED]
    assert [response.status_code for response in stored] == [200] * len(STORED)
    with fuzz_server.client("radiologist") as reader:
        for path in STORED:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            study = f"/dicom-web/studies/{ds.StudyInstanceUID}"
            series = f"{study}/series/{ds.SeriesInstanceUID}"
            instance = f"{series}/instances/{ds.SOPInstanceUID}"
            for url in (f"{study}/metadata", f"{series}/metadata", f"{instance}/metadata"):
                response = reader.get(url)
                assert response.status_code == 200, f"{url}: {response.text}"
                assert response.json()[0]["00080018"]["Value"] == [ds.SOPInstanceUID]
    db = Database(f"sqlite:///{fuzz_server.home / 'index.db'}")
    try:
        with db.read() as conn:
            for path in REFUSED:
                uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
                assert stored_version(conn, str(uid)) is None
    finally:
        db.dispose()
