"""Inputs the fuzzer found a bug with (tests/fuzz/regressions/*.dcm), replayed: each is refused
with a reason (InvalidInstance in process, 0xC000 by C-STORE, a 409 FailureReason 0xC000 by
STOW-RS) and nothing of it is stored.

- ``deep-defined-length-sequences.dcm``: CT_small.dcm with a Content Sequence nested 1,000
  items deep, every length defined. The Part 10 check bounded only undefined-length nesting,
  so it was stored; WADO-RS ``/metadata`` then failed with a 500 (RecursionError in pydicom's
  DICOM JSON encoder) and Starlette dropped the keep-alive connection.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from bench.fuzzing.senders import multipart
from pacs.dimse import status
from pacs.errors import InvalidInstance
from pacs.index import Database, upgrade
from pacs.index.queries import counts
from pacs.index.records import stored_version
from pacs.ingest import Archive, Source
from pacs.storage import open_store
from tests.dicom import store_statuses
from tests.fuzz.conftest import REGRESSIONS
from tests.servers import PacsServer

FOUND = sorted(REGRESSIONS.glob("*.dcm"))


def test_there_are_regressions_to_replay() -> None:
    assert FOUND


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[Archive]:
    db = Database(f"sqlite:///{tmp_path / 'index.db'}")
    upgrade(db)
    yield Archive(db, open_store(f"file://{tmp_path / 'storage'}"))
    db.dispose()


@pytest.mark.parametrize("path", FOUND, ids=lambda p: p.name)
def test_refused_in_process(archive: Archive, path: Path) -> None:
    with pytest.raises(InvalidInstance) as refused:
        archive.store(path.read_bytes(), Source("STOW", subject="fuzz"))
    assert str(refused.value)
    with archive.db.read() as conn:
        assert counts(conn).instances == 0
    assert list(archive.blobs.list()) == []


def test_refused_by_c_store_and_stow_rs(fuzz_server: PacsServer) -> None:
    statuses = store_statuses(fuzz_server.port, FOUND, calling_aet="FUZZ_REPLAY")
    assert set(statuses.values()) == {status.CANNOT_UNDERSTAND}
    with fuzz_server.client("modality") as client:
        for path in FOUND:
            body, content_type = multipart([path.read_bytes()])
            response = client.post(
                "/dicom-web/studies", content=body, headers={"Content-Type": content_type}
            )
            assert response.status_code == 409, response.text
            assert response.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0xC000]
            assert "nested too deeply" in response.headers["Warning"]
    db = Database(f"sqlite:///{fuzz_server.home / 'index.db'}")
    try:
        with db.read() as conn:
            for path in FOUND:
                uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
                assert stored_version(conn, str(uid)) is None
    finally:
        db.dispose()
