"""Series metadata is built once per version of the series and then served without blobs."""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest

from pacs.dimse import status
from tests.dicom import LIDC_0001, dicom_files, store_statuses
from tests.servers import PacsServer


@pytest.fixture
def server(tmp_path: Path) -> Iterator[PacsServer]:
    """An archive of its own: this test changes what it holds."""
    pacs = PacsServer(tmp_path / "home").start()
    assert set(store_statuses(pacs.port, dicom_files(LIDC_0001)[:5]).values()) == {0}
    yield pacs
    pacs.stop()


def test_series_metadata_is_cached_with_etag_and_gzip(server: PacsServer) -> None:
    reader_token = server.token("radiologist")
    lidc = pydicom.dcmread(dicom_files(LIDC_0001)[0])
    url = (
        f"{server.url}/dicom-web/studies/{lidc.StudyInstanceUID}"
        f"/series/{lidc.SeriesInstanceUID}/metadata"
    )
    headers = {"Authorization": f"Bearer {reader_token}", "Accept-Encoding": "gzip"}
    first = httpx.get(url, headers=headers)
    assert first.status_code == 200
    assert first.headers["content-encoding"] == "gzip"
    etag = first.headers["etag"]
    assert len(first.json()) == 5

    # Served from the cache: the series' blobs are not opened again (here: not even there).
    storage = server.home / "storage" / lidc.StudyInstanceUID
    hidden = server.home / "hidden-study"
    storage.rename(hidden)
    try:
        again = httpx.get(url, headers=headers)
        assert again.status_code == 200
        assert again.json() == first.json()
        unchanged = httpx.get(url, headers={**headers, "If-None-Match": etag})
        assert unchanged.status_code == 304
        plain = httpx.get(
            url, headers={"Authorization": headers["Authorization"], "Accept-Encoding": "identity"}
        )
        assert "content-encoding" not in plain.headers
        assert plain.json() == first.json()
    finally:
        hidden.rename(storage)

    # A new instance in the series is a new version: a new ETag and the instance listed.
    sixth = dicom_files(LIDC_0001)[5]
    assert store_statuses(server.port, [sixth]) == {sixth.name: status.SUCCESS}
    changed = httpx.get(url, headers={**headers, "If-None-Match": etag})
    assert changed.status_code == 200
    assert changed.headers["etag"] != etag
    assert len(changed.json()) == 6

    study_url = f"{server.url}/dicom-web/studies/{lidc.StudyInstanceUID}/metadata"
    study = httpx.get(study_url, headers=headers)
    assert len(study.json()) == 6
    assert (
        httpx.get(
            study_url, headers={**headers, "If-None-Match": study.headers["etag"]}
        ).status_code
        == 304
    )


def test_cached_metadata_follows_the_url_the_client_used(server: PacsServer) -> None:
    lidc = pydicom.dcmread(dicom_files(LIDC_0001)[0])
    path = f"/dicom-web/studies/{lidc.StudyInstanceUID}/series/{lidc.SeriesInstanceUID}/metadata"
    headers = {"Authorization": f"Bearer {server.token('radiologist')}"}
    by_ip = httpx.get(f"http://127.0.0.1:{server.http_port}{path}", headers=headers).json()
    by_name = httpx.get(f"http://localhost:{server.http_port}{path}", headers=headers).json()
    assert by_ip[0]["7FE00010"]["BulkDataURI"].startswith(f"http://127.0.0.1:{server.http_port}/")
    assert by_name[0]["7FE00010"]["BulkDataURI"].startswith(f"http://localhost:{server.http_port}/")


def raw_get(url: str, headers: dict[str, str]) -> tuple[httpx.Response, bytes]:
    """A GET whose body is returned as sent (httpx would undo the Content-Encoding)."""
    with httpx.stream("GET", url, headers=headers) as response:
        return response, b"".join(response.iter_raw())


def test_gzip_clients_get_the_kept_gzip_body_others_identity(server: PacsServer) -> None:
    lidc = pydicom.dcmread(dicom_files(LIDC_0001)[0])
    url = (
        f"{server.url}/dicom-web/studies/{lidc.StudyInstanceUID}"
        f"/series/{lidc.SeriesInstanceUID}/metadata"
    )
    auth = {"Authorization": f"Bearer {server.token('radiologist')}"}
    plain, identity = raw_get(url, {**auth, "Accept-Encoding": "identity"})
    assert plain.status_code == 200 and "content-encoding" not in plain.headers
    assert plain.headers["vary"] == "Accept-Encoding"

    first, compressed = raw_get(url, {**auth, "Accept-Encoding": "gzip, deflate"})
    again, compressed_again = raw_get(url, {**auth, "Accept-Encoding": "gzip"})
    assert first.headers["content-encoding"] == again.headers["content-encoding"] == "gzip"
    assert first.headers["vary"] == "Accept-Encoding"
    assert first.headers["etag"] == again.headers["etag"] == plain.headers["etag"]
    assert compressed_again == compressed  # kept, sent as it is
    assert gzip.decompress(compressed) == identity
    assert int(first.headers["content-length"]) == len(compressed) < len(identity) // 4

    refused, body = raw_get(url, {**auth, "Accept-Encoding": "gzip;q=0, identity"})
    assert "content-encoding" not in refused.headers and body == identity
    etag = first.headers["etag"]
    cached, _ = raw_get(url, {**auth, "Accept-Encoding": "gzip", "If-None-Match": etag})
    assert cached.status_code == 304 and cached.headers["etag"] == etag

    # Scoped like every read: another facility's reader gets a 404, gzip or not, ETag or not.
    elsewhere = {"Authorization": f"Bearer {server.token('radiologist', facilities=('other',))}"}
    for extra in ({"Accept-Encoding": "identity"}, {}, {"If-None-Match": etag}):
        assert httpx.get(url, headers={**elsewhere, **extra}).status_code == 404
    bad_uid = url.replace(lidc.SeriesInstanceUID, "not-a-uid")
    assert httpx.get(bad_uid, headers=auth).status_code == 400
