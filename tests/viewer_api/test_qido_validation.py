"""QIDO-RS refuses malformed matching values with 400, naming the key and the reason: the
archive's one search checks every value by its VR (PS3.4 C.2.2.2, PS3.5 6.2)."""

from __future__ import annotations

import httpx
import pydicom
import pytest

from pacs.matching import MAX_LIST_VALUES
from tests.dicom import LIDC_0001, dicom_files
from tests.servers import PacsServer


def qido(server: PacsServer, token: str, path: str, **params: str) -> httpx.Response:
    return httpx.get(
        f"{server.url}/dicom-web{path}",
        params=params,
        headers={"Authorization": f"Bearer {token}", "Accept": "application/dicom+json"},
        timeout=60,
    )


@pytest.mark.parametrize(
    ("path", "key", "value", "reason"),
    [
        ("/studies", "StudyDate", "notadate", "is not a date (YYYYMMDD)"),
        ("/studies", "StudyDate", "2024", "is not a date (YYYYMMDD)"),
        ("/studies", "StudyDate", "20240101-2024", "range"),
        ("/studies", "StudyTime", "2561", "is not a time"),
        ("/instances", "InstanceNumber", "1" * 40, "out of the IS range"),
        ("/instances", "00200013", "9" * 40, "out of the IS range"),  # by tag too
        ("/instances", "Rows", "70000", "out of the US range"),
        ("/studies", "StudyInstanceUID", "1.2.abc", "is not a UID"),
        ("/series", "SeriesInstanceUID", "1.2.*", "wild card"),
        ("/studies", "PatientName", "A^B^C^D^E^F", "more than 5 name components"),
        ("/studies", "PatientName", "A=B=C=D", "more than 3 component groups"),
        ("/studies", "AccessionNumber", "A" * 17, "longer than 16 characters"),
        ("/series", "Modality", "ct", "not a code string"),
    ],
)
def test_malformed_values_are_400_naming_the_key(
    server: PacsServer, reader_token: str, path: str, key: str, value: str, reason: str
) -> None:
    response = qido(server, reader_token, path, **{key: value})
    assert response.status_code == 400, response.text
    detail = response.json()["detail"]
    keyword = "InstanceNumber" if key == "00200013" else key
    assert detail.startswith(f"{keyword}: "), detail
    assert reason in detail
    assert "SELECT" not in detail and "sqlite" not in detail.lower()


def test_a_uid_list_too_long_for_the_database_is_400_with_the_limit(
    server: PacsServer, reader_token: str
) -> None:
    uids = ",".join(f"1.2.826.0.1.{n}" for n in range(1200))
    response = qido(server, reader_token, "/studies", StudyInstanceUID=uids)
    assert response.status_code == 400, response.text
    detail = response.json()["detail"]
    assert f"at most {MAX_LIST_VALUES}" in detail
    assert len(detail) < 200  # the reason, not the SQL and its parameters


def test_valid_values_still_match(server: PacsServer, reader_token: str) -> None:
    lidc = pydicom.dcmread(dicom_files(LIDC_0001)[0])
    found = qido(
        server,
        reader_token,
        "/studies",
        StudyDate=f"{lidc.StudyDate}-",
        StudyInstanceUID=f"1.2.3,{lidc.StudyInstanceUID}",  # a UID list, comma-separated
    )
    assert found.status_code == 200, found.text
    assert [s["0020000D"]["Value"][0] for s in found.json()] == [lidc.StudyInstanceUID]
    universal = qido(server, reader_token, "/studies", StudyDate="")
    assert universal.status_code == 200
    everything = qido(server, reader_token, "/studies")  # other tests add studies to this archive
    assert len(universal.json()) == len(everything.json()) >= 3
