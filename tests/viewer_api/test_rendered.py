"""WADO-RS frames, rendered images and thumbnails, on the real CT, CR and compressed data."""

from __future__ import annotations

from io import BytesIO

import httpx
import numpy as np
import pydicom
from PIL import Image

from tests.dicom import LIDC_0001, dicom_files
from tests.servers import DATA, PacsServer
from tests.viewer_api.conftest import JPEG


def instance_url(server: PacsServer, ds: pydicom.Dataset) -> str:
    return (
        f"{server.url}/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )


def get(url: str, token: str, accept: str = "*/*") -> httpx.Response:
    return httpx.get(url, headers={"Authorization": f"Bearer {token}", "Accept": accept})


def test_ct_rendered_with_hu_windows(server: PacsServer, reader_token: str) -> None:
    ds = pydicom.dcmread(dicom_files(LIDC_0001)[0])
    url = instance_url(server, ds) + "/rendered"
    # A lung window and a bone window of the same slice: different images, both 512x512 JPEG.
    lung = get(url + "?window=-600,1500", reader_token)
    bone = get(url + "?window=400,1800", reader_token, "image/png")
    assert lung.headers["content-type"] == "image/jpeg"
    assert bone.headers["content-type"] == "image/png"
    lung_image = np.asarray(Image.open(BytesIO(lung.content)))
    bone_image = np.asarray(Image.open(BytesIO(bone.content)))
    assert lung_image.shape == bone_image.shape == (512, 512)
    # Soft tissue (~40 HU) is brighter in the lung window; air is black in the bone window.
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    tissue = np.abs(hu - 40) < 30
    assert lung_image[tissue].mean() > bone_image[tissue].mean()
    assert bone_image[np.abs(hu + 1000) < 50].max() == 0
    # The lossless rendering is exactly the window applied to Hounsfield units.
    lung_png = get(url + "?window=-600,1500", reader_token, "image/png")
    expected = np.clip((hu - (-600 - 750)) / 1500, 0, 1) * 255
    rendered = np.asarray(Image.open(BytesIO(lung_png.content))).astype(float)
    assert np.abs(rendered - expected.astype(np.uint8)).max() <= 1


def test_viewport_quality_and_bad_parameters(server: PacsServer, reader_token: str) -> None:
    ds = pydicom.dcmread(dicom_files(LIDC_0001)[0])
    url = instance_url(server, ds) + "/rendered"
    small = get(url + "?viewport=64,64&quality=50", reader_token)
    assert Image.open(BytesIO(small.content)).size == (64, 64)
    for bad in ("window=abc", "window=40,-1", "viewport=0,10", "quality=500"):
        assert get(f"{url}?{bad}", reader_token).status_code == 400, bad
    assert get(url, reader_token, "application/pdf").status_code == 406


def test_thumbnails_whatever_the_accept_header_names(server: PacsServer, reader_token: str) -> None:
    """OHIF's bulk-data path asks for a thumbnail as multipart/related; type="image/jpeg",
    and <img> elements name types we do not render: a thumbnail still comes (as JPEG unless
    a rendered type is named), where the rendered resource answers 406."""
    ds = pydicom.dcmread(dicom_files(LIDC_0001)[0])
    base = f"{server.url}/dicom-web/studies/{ds.StudyInstanceUID}"
    urls = (
        base + "/thumbnail",
        f"{base}/series/{ds.SeriesInstanceUID}/thumbnail",
        instance_url(server, ds) + "/thumbnail?viewport=256,256",
    )
    for url in urls:
        for accept, media in (
            ('multipart/related; type="image/jpeg"', "image/jpeg"),
            ('multipart/related; type="image/png"', "image/png"),
            ("application/octet-stream", "image/jpeg"),
            ("image/avif,image/webp", "image/jpeg"),
            ("", "image/jpeg"),
        ):
            response = get(url, reader_token, accept)
            assert response.status_code == 200, (url, accept, response.text)
            assert response.headers["content-type"] == media
            assert Image.open(BytesIO(response.content)).format == media.split("/")[1].upper()
    assert (
        get(instance_url(server, ds) + "/rendered", reader_token, "application/pdf").status_code
        == 406
    )


def test_thumbnails_and_compressed_frames(server: PacsServer, reader_token: str) -> None:
    ds = pydicom.dcmread(dicom_files(LIDC_0001)[0])
    base = f"{server.url}/dicom-web/studies/{ds.StudyInstanceUID}"
    for url in (base + "/thumbnail", f"{base}/series/{ds.SeriesInstanceUID}/thumbnail"):
        image = Image.open(BytesIO(get(url, reader_token).content))
        assert max(image.size) == 128
    jpeg = pydicom.dcmread(JPEG)
    frames = instance_url(server, jpeg) + "/frames/1"
    native = get(frames, reader_token, 'multipart/related; type="application/octet-stream"')
    assert native.status_code == 200
    assert len(native.content) > jpeg.Rows * jpeg.Columns  # decoded pixels
    stored = get(
        frames,
        reader_token,
        'multipart/related; type="application/octet-stream"; transfer-syntax=*',
    )
    assert b"\xff\xd8" in stored.content  # the JPEG stream as stored
    assert len(stored.content) < len(native.content)
    assert get(instance_url(server, jpeg) + "/frames/2", reader_token).status_code == 404
    assert get(instance_url(server, jpeg) + "/frames/x", reader_token).status_code == 400


def test_native_ct_frame_is_the_stored_pixel_data(server: PacsServer, reader_token: str) -> None:
    ds = pydicom.dcmread(dicom_files(LIDC_0001)[1])
    response = get(instance_url(server, ds) + "/frames/1", reader_token)
    assert response.status_code == 200
    assert ds.PixelData in response.content


def test_monochrome1_is_inverted(server: PacsServer, reader_token: str) -> None:
    path = DATA / "cxr" / "cr-chest-mono1" / "CR-MONO1-10-chest.dcm"
    server.pacs("send", str(path), "--port", str(server.port))
    ds = pydicom.dcmread(path, force=True)
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian  # the file has no meta
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    response = get(instance_url(server, ds) + "/rendered", reader_token, "image/png")
    image = np.asarray(Image.open(BytesIO(response.content))).astype(float)
    raw = ds.pixel_array.astype(float)
    # The highest stored values are the darkest on screen, the lowest the brightest.
    assert image[raw >= np.percentile(raw, 99)].mean() < image[raw <= np.percentile(raw, 1)].mean()
