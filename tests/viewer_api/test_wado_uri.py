"""WADO-URI (PS3.18 chapter 9) over HTTP, as an image link in an EMR calls it when a clinician
opens it with their own token (the EMR's own role reads no pixels)."""

from __future__ import annotations

from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from PIL import Image

from pacs.dimse import status
from tests.dicom import LIDC_0001, dicom_files, store_statuses
from tests.servers import DATA, PacsServer

CT = dicom_files(LIDC_0001)[0]
JPEG = next((DATA / "transfer-syntaxes").glob("*JPEGProcess1TransferSyntax*"))
CINE = DATA / "edge-cases" / "examples_ybr_color.dcm"  # ultrasound, 30 JPEG frames
SR = DATA / "edge-cases" / "test-SR.dcm"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PacsServer]:
    pacs = PacsServer(tmp_path_factory.mktemp("wado-uri") / "home").start()
    assert set(store_statuses(pacs.port, [CT, JPEG, CINE, SR]).values()) == {status.SUCCESS}
    yield pacs
    pacs.stop()


@pytest.fixture(scope="module")
def token(server: PacsServer) -> str:
    return server.token("radiologist")


def wado(server: PacsServer, token: str | None, path: Path, **params: str) -> httpx.Response:
    """An EMR link: GET /wado?requestType=WADO&studyUID=...&seriesUID=...&objectUID=..."""
    ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    query = {
        "requestType": "WADO",
        "studyUID": ds.StudyInstanceUID,
        "seriesUID": ds.SeriesInstanceUID,
        "objectUID": ds.SOPInstanceUID,
        **params,
    }
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.get(f"{server.url}/wado", params=query, headers=headers, timeout=60)


def image(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.asarray(Image.open(BytesIO(response.content)))


def test_default_is_a_jpeg_of_the_first_frame(server: PacsServer, token: str) -> None:
    response = wado(server, token, CT)
    assert response.headers["content-type"] == "image/jpeg"
    assert image(response).shape == (512, 512)


def test_each_rendered_content_type(server: PacsServer, token: str) -> None:
    for media, magic in (
        ("image/jpeg", b"\xff\xd8"),
        ("image/png", b"\x89PNG"),
        ("image/gif", b"GIF8"),
    ):
        response = wado(server, token, CT, contentType=media)
        assert response.headers["content-type"] == media
        assert response.content.startswith(magic)
        assert image(response).shape[:2] == (512, 512)
    # A list: the first we produce.
    listed = wado(server, token, CT, contentType="image/webp,image/png")
    assert listed.headers["content-type"] == "image/png"


def test_windowing_is_the_wado_rs_rendering(server: PacsServer, token: str) -> None:
    ds = pydicom.dcmread(CT)
    uri = wado(server, token, CT, contentType="image/png", windowCenter="-600", windowWidth="1500")
    base = (
        f"{server.url}/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}/rendered?window=-600,1500"
    )
    rs = httpx.get(base, headers={"Authorization": f"Bearer {token}", "Accept": "image/png"})
    assert uri.content == rs.content  # one implementation
    bone = image(
        wado(server, token, CT, contentType="image/png", windowCenter="400", windowWidth="1800")
    )
    assert not np.array_equal(image(uri), bone)


def test_frame_number_and_size(server: PacsServer, token: str) -> None:
    first = image(wado(server, token, CINE, contentType="image/png", frameNumber="1"))
    last = image(wado(server, token, CINE, contentType="image/png", frameNumber="30"))
    assert first.shape == last.shape == (240, 320, 3)
    assert not np.array_equal(first, last)
    small = image(wado(server, token, CINE, rows="120"))
    assert small.shape[:2] == (120, 160)  # aspect ratio kept
    boxed = image(wado(server, token, CT, rows="100", columns="50", imageQuality="40"))
    assert boxed.shape == (50, 50)


def test_application_dicom_defaults_to_explicit_little_endian(
    server: PacsServer, token: str
) -> None:
    response = wado(server, token, JPEG, contentType="application/dicom")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/dicom")
    ds = pydicom.dcmread(BytesIO(response.content))
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert ds.pixel_array.shape == (ds.Rows, ds.Columns)
    stored = wado(server, token, JPEG, contentType="application/dicom", transferSyntax="*")
    assert pydicom.dcmread(BytesIO(stored.content)).file_meta.TransferSyntaxUID == (
        pydicom.uid.JPEGBaseline8Bit
    )
    big = wado(
        server, token, JPEG, contentType="application/dicom", transferSyntax="1.2.840.10008.1.2.2"
    )
    assert big.status_code == 406
    sr = wado(server, token, SR, contentType="application/dicom")
    assert pydicom.dcmread(BytesIO(sr.content)).SOPInstanceUID == pydicom.dcmread(SR).SOPInstanceUID


@pytest.mark.parametrize(
    ("params", "code", "named"),
    [
        ({"requestType": "WADO-RS"}, 400, "requestType"),
        ({"objectUID": "not-a-uid"}, 400, "objectUID"),
        ({"studyUID": ""}, 400, "studyUID"),
        ({"objectUID": "1.2.3.4.5.6.7"}, 404, ""),
        ({"contentType": "application/pdf"}, 406, "contentType"),
        ({"frameNumber": "0"}, 400, "frameNumber"),
        ({"frameNumber": "2"}, 400, "frameNumber"),
        ({"frameNumber": "9" * 40}, 400, "frameNumber"),
        ({"frameNumber": "1_0"}, 400, "frameNumber"),  # int() would read 10
        ({"rows": "\u0663"}, 400, "rows"),  # a non-ASCII digit int() would accept
        ({"windowCenter": "40"}, 400, "windowWidth"),
        ({"windowCenter": "40", "windowWidth": "-1"}, 400, "width"),
        ({"rows": "x"}, 400, "rows"),
        ({"columns": "99999"}, 400, "columns"),
        ({"imageQuality": "0"}, 400, "imageQuality"),
        ({"anonymize": "yes"}, 400, "anonymize"),
        ({"contentType": "application/dicom", "frameNumber": "1"}, 400, "frameNumber"),
        ({"contentType": "application/dicom", "transferSyntax": "x"}, 400, "transferSyntax"),
        ({"transferSyntax": "1.2.840.10008.1.2.1"}, 400, "transferSyntax"),
    ],
)
def test_bad_requests_name_the_parameter(
    server: PacsServer, token: str, params: dict[str, str], code: int, named: str
) -> None:
    response = wado(server, token, CT, **params)
    assert response.status_code == code, response.text
    assert named in response.json()["detail"]


def test_same_authentication_as_wado_rs(server: PacsServer) -> None:
    assert wado(server, None, CT).status_code == 401
    assert wado(server, server.token("modality"), CT).status_code == 403
    assert wado(server, server.token("emr"), CT).status_code == 403  # results only


def test_objects_without_pixels_are_not_rendered(server: PacsServer, token: str) -> None:
    response = wado(server, token, SR)
    assert response.status_code == 406
    assert "application/dicom" in response.json()["detail"]
