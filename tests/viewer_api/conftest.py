"""A running archive with DICOMweb, holding real data, for the API tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pacs.dimse import status
from tests.dicom import (
    LIDC_0001,
    VIETNAMESE_NAME,
    dicom_files,
    store_statuses,
    write_vietnamese_patient,
)
from tests.servers import DATA, PacsServer

JPEG = next((DATA / "transfer-syntaxes").glob("*JPEGProcess1TransferSyntax*"))
VIETNAMESE = VIETNAMESE_NAME


@pytest.fixture(scope="package")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PacsServer]:
    home = tmp_path_factory.mktemp("dicomweb")
    env = {
        "PACS_MAX_STOW_BYTES": str(8 * 1024**2),
        "PACS_CORS_ORIGINS": '["http://viewer.example"]',
    }
    pacs = PacsServer(home / "home", env).start()
    named = write_vietnamese_patient(home / "vi.dcm")
    files = [*dicom_files(LIDC_0001)[:5], JPEG, named]
    assert set(store_statuses(pacs.port, files).values()) == {status.SUCCESS}
    yield pacs
    pacs.stop()


@pytest.fixture(scope="package")
def reader_token(server: PacsServer) -> str:
    return server.token("radiologist")
