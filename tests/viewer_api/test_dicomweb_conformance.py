"""PS3.18 conformance found wrong by clients and a red-team pass (issue 10), over real HTTP."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from pacs.dimse import status
from tests.dicom import LIDC_0001, derived, dicom_files, encode, store_statuses
from tests.servers import DATA, PacsServer, running
from tests.viewer_api.conftest import JPEG
from viewer_api.problems import BadRequest
from viewer_api.stow import split_multipart

BIG_ENDIAN = DATA / "edge-cases" / "MR_small_bigendian.dcm"
SERIES_SIZE = 140


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _stow_request(server: PacsServer, ds: pydicom.Dataset) -> tuple[bytes, dict[str, str]]:
    """The body and headers of a one-part STOW-RS request for *ds*, as a modality sends it."""
    boundary = "stow-boundary"
    body = (
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + encode(ds)
        + f"\r\n--{boundary}--\r\n".encode()
    )
    headers = {
        **_auth(server.token("modality")),
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
    }
    return body, headers


def _parts(response: httpx.Response) -> list[tuple[str, bytes]]:
    """(Content-Type, body) of each part of a multipart/related response."""
    boundary = response.headers["content-type"].split("boundary=")[1].strip('"')
    body = response.content
    assert body.startswith(f"--{boundary}\r\n".encode())  # no preamble
    parts = []
    for section in body.split(f"--{boundary}".encode())[1:-1]:
        header, _, content = section.partition(b"\r\n\r\n")
        content_type = header.decode().split("Content-Type:")[1].strip()
        parts.append((content_type, content[:-2]))
    return parts


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PacsServer]:
    """An archive of its own: a 140-instance series, a JPEG and a big-endian instance."""
    home = tmp_path_factory.mktemp("conformance")
    pacs = PacsServer(home / "home", {"PACS_MAX_STOW_BYTES": str(16 * 1024**2)}).start()
    study, series = generate_uid(), generate_uid()
    files = []
    for number in range(1, SERIES_SIZE + 1):
        path = home / f"{number}.dcm"
        ds = derived(StudyInstanceUID=study, SeriesInstanceUID=series, InstanceNumber=number)
        path.write_bytes(encode(ds))
        files.append(path)
    assert set(store_statuses(pacs.port, [*files, JPEG, BIG_ENDIAN]).values()) == {status.SUCCESS}
    pacs.series = (study, series)  # type: ignore[attr-defined]
    yield pacs
    pacs.stop()


@contextlib.contextmanager
def archive_of(
    folder: Path, files: list[Path], env: dict[str, str] | None = None
) -> Iterator[PacsServer]:
    """An archive of its own (for a test that configures or damages it) holding *files*."""
    with running(PacsServer(folder / "home", env)) as pacs:
        assert set(store_statuses(pacs.port, files).values()) == {status.SUCCESS}
        yield pacs


def test_includefield_all_works_on_every_qido_route(archive: PacsServer) -> None:
    study, series = archive.series  # type: ignore[attr-defined]
    headers = _auth(archive.token("radiologist"))
    for path in (
        "/studies",
        "/series",
        "/instances",
        f"/studies/{study}/series",
        f"/studies/{study}/instances",
        f"/studies/{study}/series/{series}/instances",
    ):
        response = httpx.get(f"{archive.url}/dicom-web{path}?includefield=all", headers=headers)
        assert response.status_code == 200, (path, response.text)
        assert response.json()


def test_qido_says_when_more_results_exist_and_pages(archive: PacsServer) -> None:
    study, series = archive.series  # type: ignore[attr-defined]
    headers = _auth(archive.token("radiologist"))
    url = f"{archive.url}/dicom-web/studies/{study}/series/{series}/instances"
    first = httpx.get(url, headers=headers)
    assert len(first.json()) == 100
    assert first.headers["warning"] == (
        "299 127.0.0.1: There are 40 additional results that can be requested"
    )
    rest = httpx.get(url, params={"offset": 100}, headers=headers)
    assert len(rest.json()) == 40
    assert "warning" not in rest.headers
    seen = {i["00080018"]["Value"][0] for i in first.json() + rest.json()}
    assert len(seen) == SERIES_SIZE
    # A limit above the server's maximum is clamped to it, not refused.
    clamped = httpx.get(url, params={"limit": 10**6}, headers=headers)
    assert clamped.status_code == 200
    assert len(clamped.json()) == SERIES_SIZE
    for odd in ("1_0", " 5", "\u0663", "9" * 40):  # int() takes the first three
        assert httpx.get(url, params={"limit": odd}, headers=headers).status_code == 400, odd
    paged = httpx.get(url, params={"limit": 30, "offset": 100}, headers=headers)
    assert len(paged.json()) == 30
    assert "There are 10 additional results" in paged.headers["warning"]
    # dicomweb-client pages through with the same parameters.
    web = DICOMwebClient(f"{archive.url}/dicom-web", headers=headers)
    assert len(web.search_for_instances(study, series, get_remaining=True)) == SERIES_SIZE


def test_accept_headers_are_negotiated(archive: PacsServer) -> None:
    study, series = archive.series  # type: ignore[attr-defined]
    headers = _auth(archive.token("radiologist"))
    metadata = f"{archive.url}/dicom-web/studies/{study}/series/{series}/metadata"
    refused = httpx.get(metadata, headers={**headers, "Accept": "toto"})
    assert refused.status_code == 406
    assert "application/dicom+json" in refused.json()["detail"]
    for accept in (
        "application/dicom+json",
        "*/*",
        "text/html;q=0.9, application/dicom+json;q=0.8",
        "application/json, text/plain;q=0.5",
        "multipart/related; type=application/dicom+xml;q=0.5, application/*;q=0.1",
    ):
        response = httpx.get(metadata, headers={**headers, "Accept": accept})
        assert response.status_code == 200, accept
    assert httpx.get(metadata, headers={**headers, "Accept": "text/html"}).status_code == 406
    instance = f"{archive.url}/dicom-web/studies/{study}/series/{series}"
    for accept in (
        "multipart/related; type=application/dicom; transfer-syntax=*",  # unquoted type=
        'text/html;q=1, multipart/related; type="application/dicom"; transfer-syntax=*;q=0.5',
        "*/*",
    ):
        response = httpx.get(instance, headers={**headers, "Accept": accept})
        assert response.status_code == 200, accept
    zero = 'multipart/related; type="application/dicom"; q=0'
    assert httpx.get(instance, headers={**headers, "Accept": zero}).status_code == 406


def test_default_transfer_syntax_is_explicit_little_endian(archive: PacsServer) -> None:
    headers = _auth(archive.token("radiologist"))
    jpeg = pydicom.dcmread(JPEG)
    url = (
        f"{archive.url}/dicom-web/studies/{jpeg.StudyInstanceUID}/series/"
        f"{jpeg.SeriesInstanceUID}/instances/{jpeg.SOPInstanceUID}"
    )
    [(content_type, body)] = _parts(httpx.get(url, headers=headers))
    assert content_type == f"application/dicom; transfer-syntax={ExplicitVRLittleEndian}"
    default = pydicom.dcmread(BytesIO(body))
    assert default.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert default.SOPInstanceUID == jpeg.SOPInstanceUID
    assert default.pixel_array.shape == jpeg.pixel_array.shape
    # "*": as stored, byte for byte.
    as_stored = 'multipart/related; type="application/dicom"; transfer-syntax=*'
    [(content_type, body)] = _parts(httpx.get(url, headers={**headers, "Accept": as_stored}))
    assert content_type.endswith(f"transfer-syntax={jpeg.file_meta.TransferSyntaxUID}")
    assert pydicom.dcmread(BytesIO(body)).PixelData == jpeg.PixelData


def test_big_endian_is_sent_little_endian_and_never_produced(archive: PacsServer) -> None:
    headers = _auth(archive.token("radiologist"))
    stored = pydicom.dcmread(BIG_ENDIAN)
    url = (
        f"{archive.url}/dicom-web/studies/{stored.StudyInstanceUID}/series/"
        f"{stored.SeriesInstanceUID}/instances/{stored.SOPInstanceUID}"
    )
    [(_, body)] = _parts(httpx.get(url, headers=headers))
    sent = pydicom.dcmread(BytesIO(body))
    assert sent.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert np.array_equal(sent.pixel_array, stored.pixel_array)
    # Transcoding to Big Endian: a 406 decided before the first byte, not a broken 200;
    # an instance stored in Big Endian may still be had as stored.
    big = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.2'
    lidc = f"{archive.url}/dicom-web/studies/{archive.series[0]}"  # type: ignore[attr-defined]
    refused = httpx.get(lidc, headers={**headers, "Accept": big})
    assert refused.status_code == 406
    assert "retired" in refused.json()["detail"]
    [(content_type, _)] = _parts(httpx.get(url, headers={**headers, "Accept": big}))
    assert content_type.endswith("transfer-syntax=1.2.840.10008.1.2.2")


def test_allow_lists_every_method_of_the_route(archive: PacsServer) -> None:
    headers = _auth(archive.token("admin"))
    response = httpx.put(f"{archive.url}/dicom-web/studies", headers=headers)
    assert response.status_code == 405
    assert {m.strip() for m in response.headers["allow"].split(",")} == {"GET", "POST"}
    response = httpx.delete(f"{archive.url}/dicom-web/studies/1.2.3", headers=headers)
    assert response.status_code == 405
    assert "POST" in response.headers["allow"] and "GET" in response.headers["allow"]


def test_stow_response_has_the_study_url_and_no_empty_failed_sequence(
    archive: PacsServer,
) -> None:
    ds = derived(StudyInstanceUID=generate_uid(), SeriesInstanceUID=generate_uid())
    body, headers = _stow_request(archive, ds)
    response = httpx.post(f"{archive.url}/dicom-web/studies", content=body, headers=headers)
    assert response.status_code == 200
    result = response.json()
    assert "00081198" not in result  # Failed SOP Sequence omitted on full success
    assert result["00081190"]["Value"] == [f"{archive.url}/dicom-web/studies/{ds.StudyInstanceUID}"]


def test_a_large_stow_does_not_stall_other_requests(archive: PacsServer) -> None:
    """Parsing and storing run off the event loop: /healthz answers during a large STOW."""
    ds = derived(StudyInstanceUID=generate_uid(), SeriesInstanceUID=generate_uid())
    ds.Rows = ds.Columns = 2000  # ~8 MB of pixel data
    ds.PixelData = np.zeros((2000, 2000), dtype=np.int16).tobytes()
    body, headers = _stow_request(archive, ds)
    done: list[int] = []
    worst = 0.0

    def upload() -> None:
        done.append(
            httpx.post(
                f"{archive.url}/dicom-web/studies", content=body, headers=headers, timeout=60
            ).status_code
        )

    thread = threading.Thread(target=upload)
    thread.start()
    while thread.is_alive():
        started = time.perf_counter()
        assert httpx.get(f"{archive.url}/healthz", timeout=30).status_code == 200
        worst = max(worst, time.perf_counter() - started)
        time.sleep(0.01)
    thread.join()
    assert done == [200]
    # Before, the loop was blocked for the whole parse and store (seconds on this machine).
    assert worst < 0.5, f"/healthz took {worst:.3f} s during the STOW"


def test_public_url_not_the_host_header_makes_links(tmp_path: Path) -> None:
    public = "https://pacs.example.org"
    [path] = dicom_files(LIDC_0001)[:1]
    with archive_of(tmp_path, [path], {"PACS_PUBLIC_URL": public}) as pacs:
        lidc = pydicom.dcmread(path)
        headers = {**_auth(pacs.token("radiologist")), "Host": "evil.example"}
        series = f"/dicom-web/studies/{lidc.StudyInstanceUID}/series/{lidc.SeriesInstanceUID}"
        [found] = httpx.get(f"{pacs.url}/dicom-web/studies", headers=headers).json()
        assert found["00081190"]["Value"] == [f"{public}/dicom-web/studies/{lidc.StudyInstanceUID}"]
        [document] = httpx.get(f"{pacs.url}{series}/metadata", headers=headers).json()
        assert document["7FE00010"]["BulkDataURI"].startswith(f"{public}{series}/instances/")
        bundle = httpx.get(f"{pacs.url}/fhir/ImagingStudy", headers=headers).json()
        assert all(link["url"].startswith(f"{public}/fhir/") for link in bundle["link"])
        [entry] = bundle["entry"]
        assert entry["fullUrl"].startswith(f"{public}/fhir/ImagingStudy/")


def test_metadata_cache_does_not_depend_on_the_host(tmp_path: Path) -> None:
    files = dicom_files(LIDC_0001)[:3]
    with archive_of(tmp_path, files) as pacs:
        lidc = pydicom.dcmread(files[0])
        token = pacs.token("radiologist")
        url = (
            f"{pacs.url}/dicom-web/studies/{lidc.StudyInstanceUID}"
            f"/series/{lidc.SeriesInstanceUID}/metadata"
        )
        uris = []
        for host in ("a.example", "b.example", "c.example"):
            documents = httpx.get(url, headers={**_auth(token), "Host": host}).json()
            uris.append(documents[0]["7FE00010"]["BulkDataURI"])
        # Built once: one cache row, built before the second and third request.
        with sqlite3.connect(pacs.home / "index.db") as db:
            [(rows, built)] = db.execute("SELECT count(*), min(built_at) FROM series_metadata")
        assert rows == 1
        first_built = built
        httpx.get(url, headers={**_auth(token), "Host": "d.example"})
        with sqlite3.connect(pacs.home / "index.db") as db:
            [(built,)] = db.execute("SELECT built_at FROM series_metadata")
        assert built == first_built
        # Without PACS_PUBLIC_URL or a trusted proxy the links follow the address used.
        assert [uri.split("/dicom-web")[0] for uri in uris] == [
            "http://a.example",
            "http://b.example",
            "http://c.example",
        ]


def test_a_missing_blob_is_an_error_before_any_byte(tmp_path: Path) -> None:
    files = dicom_files(LIDC_0001)[:3]
    with archive_of(tmp_path, files) as pacs:
        lidc = pydicom.dcmread(files[1])
        [blob] = (pacs.home / "storage").rglob(f"{lidc.SOPInstanceUID}.*.dcm")
        blob.unlink()
        headers = _auth(pacs.token("radiologist"))
        response = httpx.get(
            f"{pacs.url}/dicom-web/studies/{lidc.StudyInstanceUID}", headers=headers
        )
        assert response.status_code == 503
        detail = response.json()["detail"]
        assert "correlation id" in detail
        assert str(pacs.home) not in response.text and "storage" not in detail
        correlation = response.headers["x-correlation-id"]
        assert correlation in detail
        assert correlation in pacs.log.read_text()  # the detail is in the log
        assert httpx.get(f"{pacs.url}/healthz").status_code == 200


def test_multipart_parts_never_swallow_each_other() -> None:
    """A part without its blank line is refused, not merged with the next part's headers."""
    merged = (
        b"--b\r\nContent-Type: application/dicom\r\nX: y\r\n"
        b"--b\r\nContent-Type: text/plain\r\n\r\nDATA\r\n--b--\r\n"
    )
    with pytest.raises(BadRequest, match="separator"):
        split_multipart(merged, "b")
    endless_headers = b"--b\r\n" + b"X" * 20_000 + b"\r\n\r\nDICM\r\n--b--\r\n"
    with pytest.raises(BadRequest):
        split_multipart(endless_headers, "b")
    good = b"--b\r\nContent-Type: application/dicom\r\n\r\nAAA\r\n--b\r\n\r\nBB\r\n--b--\r\n"
    assert [(t, good[s:e]) for t, s, e in split_multipart(good, "b")] == [
        ("application/dicom", b"AAA"),
        ("", b"BB"),
    ]


def test_forwarded_headers_count_only_from_trusted_proxies(tmp_path: Path) -> None:
    forwarded = {
        "X-Forwarded-For": "10.1.2.3",  # the end client, as a proxy adds it
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "pacs.example.org",
    }
    for trusted, expected in (('["127.0.0.1"]', "https://pacs.example.org"), ("[]", None)):
        home = tmp_path / trusted.strip('[]"')
        files = dicom_files(LIDC_0001)[:1]
        with archive_of(home, files, {"PACS_TRUSTED_PROXIES": trusted}) as pacs:
            headers = {**_auth(pacs.token("radiologist")), **forwarded}
            [found] = httpx.get(f"{pacs.url}/dicom-web/studies", headers=headers).json()
            root = found["00081190"]["Value"][0].split("/dicom-web")[0]
            assert root == (expected or pacs.url), trusted


def test_query_keys_cannot_override_the_path(archive: PacsServer) -> None:
    study, series = archive.series  # type: ignore[attr-defined]
    headers = _auth(archive.token("radiologist"))
    other = generate_uid()
    response = httpx.get(
        f"{archive.url}/dicom-web/studies/{study}/series",
        params={"StudyInstanceUID": other},
        headers=headers,
    )
    assert response.status_code == 400
    assert "contradicts" in response.json()["detail"]
    same = httpx.get(
        f"{archive.url}/dicom-web/studies/{study}/series",
        params={"StudyInstanceUID": study},
        headers=headers,
    )
    assert [s["0020000E"]["Value"][0] for s in same.json()] == [series]
