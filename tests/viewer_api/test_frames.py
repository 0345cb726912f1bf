"""Multi-frame instances over WADO-RS: every multi-frame file in data/, rendered and as frames."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import httpx
import numpy as np
import psutil
import pydicom
import pytest
from PIL import Image
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import ExplicitVRLittleEndian, XRayAngiographicImageStorage, generate_uid

from pacs.dimse import status
from tests.dicom import encode, store_statuses
from tests.servers import DATA, PacsServer
from viewer_api.frames import INLINE_BYTES

OCTET = 'multipart/related; type="application/octet-stream"'
EXPLICIT_LE = "1.2.840.10008.1.2.1"
BIG_ENDIAN_FILES = [
    DATA / "edge-cases" / "MR_small_bigendian.dcm",
    DATA / "edge-cases" / "ExplVR_BigEnd.dcm",
    *sorted((DATA / "transfer-syntaxes").glob("*BigEndian*")),
]
JPEG = next((DATA / "transfer-syntaxes").glob("*JPEGProcess1TransferSyntax*"))
IMPLICIT = next((DATA / "transfer-syntaxes").glob("*LittleEndianImplicit*"))
CINE_FRAMES = 600  # the streamed cine: 600 decoded frames of 230 kB, 138 MB in all


def number_of_frames(path: Path) -> int:
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        return int(ds.get("NumberOfFrames") or 1)
    except Exception:  # not DICOM, or Number of Frames unreadable ('1A' in badVR.dcm)
        return 1


MULTI_FRAME = sorted(p for p in DATA.rglob("*.dcm") if number_of_frames(p) > 1)


def renamed(path: Path, folder: Path) -> Path:
    """The file with a new SOP Instance UID (several share one; some name another in their
    File Meta), everything else as read, in its own transfer syntax."""
    ds = pydicom.dcmread(path)
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    out = folder / path.name
    out.write_bytes(encode(ds))
    return out


def xa_cine(folder: Path) -> Path:
    """The enhanced MR's frames as an X-ray angiography cine in Explicit VR Little Endian, whose
    header lacks Pixel Representation and Bits Stored (as some angiography systems write it)."""
    [path] = (DATA / "mr" / "siemens-enhanced-t1w").glob("*.dcm")
    mr = pydicom.dcmread(path)
    ds = pydicom.dcmread(JPEG, stop_before_pixels=True)  # patient and study of a real CT
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = XRayAngiographicImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "XA"
    for keyword in ("RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth"):
        delattr(ds, keyword) if keyword in ds else None
    del ds.PixelRepresentation, ds.BitsStored
    ds.NumberOfFrames, ds.Rows, ds.Columns = mr.NumberOfFrames, mr.Rows, mr.Columns
    ds.add_new("PixelData", "OW", mr.PixelData)
    out = folder / "xa_cine.dcm"
    out.write_bytes(encode(ds))
    return out


def large_native_cine(folder: Path) -> Path:
    """The XA cine's frames twice over: native pixel data larger than INLINE_BYTES, so that
    its frames are cut out in a worker thread, not on the event loop."""
    ds = pydicom.dcmread(xa_cine(folder))
    ds.PixelData = ds.PixelData * 2
    ds.NumberOfFrames = 2 * int(ds.NumberOfFrames)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    out = folder / "large_native_cine.dcm"
    out.write_bytes(encode(ds))
    assert out.stat().st_size > INLINE_BYTES
    return out


def long_jpeg_cine(folder: Path) -> Path:
    """The ultrasound cine's JPEG frames, repeated to CINE_FRAMES frames."""
    ds = pydicom.dcmread(DATA / "edge-cases" / "examples_ybr_color.dcm")
    frames = list(generate_frames(ds.PixelData, number_of_frames=int(ds.NumberOfFrames)))
    ds.PixelData = encapsulate([frames[i % len(frames)] for i in range(CINE_FRAMES)])
    ds.NumberOfFrames = CINE_FRAMES
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    out = folder / "long_cine.dcm"
    out.write_bytes(encode(ds))
    return out


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PacsServer, list[Path]]]:
    folder = tmp_path_factory.mktemp("frames")
    pacs = PacsServer(folder / "home").start()
    files = [renamed(path, folder) for path in MULTI_FRAME + BIG_ENDIAN_FILES]
    files += [xa_cine(folder), large_native_cine(folder), long_jpeg_cine(folder), JPEG, IMPLICIT]
    assert set(store_statuses(pacs.port, files).values()) == {status.SUCCESS}
    yield pacs, files
    pacs.stop()


@pytest.fixture(scope="module")
def server(stored: tuple[PacsServer, list[Path]]) -> PacsServer:
    return stored[0]


@pytest.fixture(scope="module")
def token(server: PacsServer) -> str:
    return server.token("radiologist")


def url(server: PacsServer, path: Path) -> str:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return (
        f"{server.url}/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )


def get(address: str, token: str, accept: str = "*/*") -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}", "Accept": accept}
    return httpx.get(address, headers=headers, timeout=60)


def parts(response: httpx.Response) -> list[tuple[str, bytes]]:
    """(Content-Type, body) of each part of a multipart/related response."""
    boundary = response.headers["content-type"].split("boundary=")[1].strip('"')
    assert response.content.startswith(f"--{boundary}\r\n".encode())  # no preamble
    found = []
    for chunk in response.content.split(f"--{boundary}".encode())[1:-1]:
        head, _, body = chunk.partition(b"\r\n\r\n")
        content_type = head.decode().split("Content-Type:")[1].strip()
        found.append((content_type, body.removesuffix(b"\r\n")))
    return found


def test_multi_frame_files_are_found() -> None:
    names = {path.name for path in MULTI_FRAME}
    assert {"examples_ybr_color.dcm", "rtdose_expb.dcm", "SC_rgb_rle_2frame.dcm"} <= names
    assert any(path.parent.name == "siemens-enhanced-t1w" for path in MULTI_FRAME)


@pytest.mark.parametrize("name", [p.name for p in MULTI_FRAME] + ["xa_cine.dcm"])
def test_every_multi_frame_file_renders_each_frame(
    stored: tuple[PacsServer, list[Path]], token: str, name: str
) -> None:
    server, files = stored
    [path] = [p for p in files if p.name == name]
    ds = pydicom.dcmread(path)
    count = int(ds.NumberOfFrames)
    raw = ds.pixel_array if "PixelRepresentation" in ds else None
    for number in sorted({1, (count + 1) // 2, count}):
        base = f"{url(server, path)}/frames/{number}/rendered"
        for query, accept in (("", "image/jpeg"), ("?window=100,400", "image/png")):
            response = get(base + query, token, accept)
            assert response.status_code == 200, (name, number, response.text)
            assert response.headers["content-type"] == accept
            image = np.asarray(Image.open(BytesIO(response.content)))
            assert image.shape[:2] == (ds.Rows, ds.Columns)
            frame = raw[number - 1] if raw is not None else None
            if query == "" and (frame is None or frame.min() != frame.max()):
                assert image.min() != image.max(), (name, number)  # not blank


def test_window_of_an_enhanced_frame_comes_from_its_functional_groups(
    stored: tuple[PacsServer, list[Path]], token: str
) -> None:
    server, files = stored
    [path] = [p for p in files if p.parent.name.startswith("frames") and "1.3.12.2" in p.name]
    ds = pydicom.dcmread(path)
    voi = ds.PerFrameFunctionalGroupsSequence[0].FrameVOILUTSequence[0]
    center, width = float(voi.WindowCenter), float(voi.WindowWidth)
    default = get(f"{url(server, path)}/frames/1/rendered", token, "image/png")
    explicit = get(
        f"{url(server, path)}/frames/1/rendered?window={center},{width}", token, "image/png"
    )
    assert default.content == explicit.content


def test_big_endian_frames_come_little_endian_and_labelled(
    stored: tuple[PacsServer, list[Path]], token: str
) -> None:
    server, files = stored
    for source in BIG_ENDIAN_FILES:
        [path] = [p for p in files if p.name == source.name]
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array
        expected = pixels[0] if int(ds.get("NumberOfFrames") or 1) > 1 else pixels
        [(content_type, body)] = parts(get(url(server, path) + "/frames/1", token, OCTET))
        assert content_type == f"application/octet-stream; transfer-syntax={EXPLICIT_LE}"
        little = np.frombuffer(body, dtype=expected.dtype.newbyteorder("<"))
        assert np.array_equal(little.reshape(expected.shape), expected), source.name
        # As stored: the big-endian bytes, labelled so.
        as_stored = get(url(server, path) + "/frames/1", token, OCTET + "; transfer-syntax=*")
        [(content_type, body)] = parts(as_stored)
        assert content_type.endswith("transfer-syntax=1.2.840.10008.1.2.2")
        assert ds.PixelData.startswith(body)  # as stored: byte order and planes kept


def test_frame_transfer_syntax_negotiation(
    stored: tuple[PacsServer, list[Path]], token: str
) -> None:
    server = stored[0]
    address = url(server, JPEG) + "/frames/1"
    ds = pydicom.dcmread(JPEG)
    # No parameter: decoded, little endian, labelled; q-values and unquoted type= are read.
    accept = "image/webp;q=0.9, multipart/related; type=application/octet-stream; q=0.5"
    [(content_type, body)] = parts(get(address, token, accept))
    assert content_type == f"application/octet-stream; transfer-syntax={EXPLICIT_LE}"
    assert len(body) == ds.Rows * ds.Columns * ds.BitsAllocated // 8
    # transfer-syntax=*: the JPEG as stored, labelled with the stored syntax.
    [(content_type, body)] = parts(get(address, token, OCTET + "; transfer-syntax=*"))
    assert content_type.endswith("transfer-syntax=1.2.840.10008.1.2.4.50")
    assert body.startswith(b"\xff\xd8")
    # Its own media type (PS3.18 Table 8.7.3-5).
    [(content_type, body)] = parts(get(address, token, 'multipart/related; type="image/jpeg"'))
    assert content_type == "image/jpeg; transfer-syntax=1.2.840.10008.1.2.4.50"
    # A syntax we cannot produce is a 406 unless a later range admits another.
    j2k = OCTET + '; transfer-syntax="1.2.840.10008.1.2.4.90"'
    assert get(address, token, j2k).status_code == 406
    assert get(address, token, j2k + ", */*;q=0.1").status_code == 200
    assert get(address, token, "multipart/related; type=application/dicom").status_code == 406
    # Uncompressed stored data, as stored: labelled with its syntax.
    implicit = url(server, IMPLICIT) + "/frames/1"
    [(content_type, body)] = parts(get(implicit, token, OCTET + "; transfer-syntax=*"))
    assert content_type.endswith("transfer-syntax=1.2.840.10008.1.2")
    assert body in pydicom.dcmread(IMPLICIT).PixelData


def test_uncompressed_frames_are_the_stored_bytes_at_their_offsets(
    stored: tuple[PacsServer, list[Path]], token: str
) -> None:
    server, files = stored
    checked, larger = 0, 0
    for path in files:
        ds = pydicom.dcmread(path)
        syntax = ds.file_meta.TransferSyntaxUID
        if syntax.is_encapsulated or not syntax.is_little_endian or ds.BitsAllocated % 8:
            continue
        samples = 2 if ds.PhotometricInterpretation == "YBR_FULL_422" else ds.SamplesPerPixel
        length = ds.Rows * ds.Columns * samples * ds.BitsAllocated // 8
        count = int(ds.get("NumberOfFrames") or 1)
        numbers = sorted({count, 1, (count + 1) // 2})
        frames = ",".join(map(str, numbers[::-1]))  # in the order asked for
        for accept in (OCTET + "; transfer-syntax=*", OCTET):
            response = get(f"{url(server, path)}/frames/{frames}", token, accept)
            assert response.status_code == 200, (path.name, response.text)
            expected = [ds.PixelData[(n - 1) * length : n * length] for n in numbers[::-1]]
            assert [body for _, body in parts(response)] == expected, path.name
            if len(numbers) == 1:  # one frame: one body, its length said
                assert int(response.headers["content-length"]) == len(response.content)
        checked += 1
        larger += path.stat().st_size > INLINE_BYTES
    assert checked >= 4  # implicit and explicit VR, single and multi-frame, the XA cine
    assert larger >= 1  # cut out in a worker thread, the others on the event loop


def test_a_frame_is_found_in_its_own_study_series_and_scope_only(
    stored: tuple[PacsServer, list[Path]], token: str
) -> None:
    server, files = stored
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in files]
    a = headers[0]
    b = next(h for h in headers if h.StudyInstanceUID != a.StudyInstanceUID)
    root = f"{server.url}/dicom-web/studies"
    own = f"{root}/{a.StudyInstanceUID}/series/{a.SeriesInstanceUID}/instances/{a.SOPInstanceUID}"
    assert get(own + "/frames/1", token, OCTET).status_code == 200
    elsewhere = server.token("radiologist", facilities=("other",))
    assert get(own + "/frames/1", elsewhere, OCTET).status_code == 404
    for study, series in (
        (a.StudyInstanceUID, b.SeriesInstanceUID),
        (b.StudyInstanceUID, a.SeriesInstanceUID),
        (b.StudyInstanceUID, b.SeriesInstanceUID),
    ):
        address = f"{root}/{study}/series/{series}/instances/{a.SOPInstanceUID}/frames/1"
        assert get(address, token, OCTET).status_code == 404
    assert get(own.replace(a.SOPInstanceUID, "1.2.3.x") + "/frames/1", token).status_code == 400


def test_frame_list_is_capped_and_refuses_repeats(
    stored: tuple[PacsServer, list[Path]], token: str
) -> None:
    server, files = stored
    [cine] = [p for p in files if p.name == "examples_ybr_color.dcm"]
    address = url(server, cine) + "/frames/"
    started = time.monotonic()
    response = get(address + ",".join(["1"] * 2000), token, OCTET)
    assert response.status_code == 400
    assert time.monotonic() - started < 2
    assert get(address + "1,2,1", token, OCTET).status_code == 400
    assert get(address + "1,31", token, OCTET).status_code == 404
    for malformed in ("0", "1_0", "%201", "-1", "1,,2", "\u0663"):  # int() takes some of these
        assert get(address + malformed, token, OCTET).status_code == 400, malformed
    assert len(parts(get(address + "3,1,2", token, OCTET))) == 3


def test_frames_stream_one_at_a_time(stored: tuple[PacsServer, list[Path]], token: str) -> None:
    server, files = stored
    [cine] = [p for p in files if p.name == "long_cine.dcm"]
    ds = pydicom.dcmread(cine, stop_before_pixels=True)
    frame_size = ds.Rows * ds.Columns * 3
    assert server.process is not None
    process = psutil.Process(server.process.pid)
    before = process.memory_info().rss
    peak = before
    done = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, process.memory_info().rss)
            time.sleep(0.005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    received = 0
    try:
        headers = {"Authorization": f"Bearer {token}", "Accept": OCTET}
        frames = ",".join(str(n) for n in range(1, CINE_FRAMES + 1))
        with httpx.stream(
            "GET", url(server, cine) + f"/frames/{frames}", headers=headers, timeout=120
        ) as response:
            assert response.status_code == 200
            for chunk in response.iter_bytes():
                received += len(chunk)
    finally:
        done.set()
        watcher.join()
    assert received > CINE_FRAMES * frame_size  # every frame, decoded
    assert peak - before < CINE_FRAMES * frame_size / 4


def test_a_series_as_stored_comes_whole_from_large_and_small_blobs(
    stored: tuple[PacsServer, list[Path]], token: str
) -> None:
    """The XA cine and its twice-as-long copy share a series: sent as stored (the blobs, as
    stored over DIMSE) from local files by the event loop, the second (over INLINE_BYTES) read
    in a worker thread."""
    server, files = stored
    cines = [p for p in files if p.name in ("xa_cine.dcm", "large_native_cine.dcm")]
    series = url(server, cines[0]).rsplit("/instances/", 1)[0]
    response = get(series, token, 'multipart/related; type="application/dicom"; transfer-syntax=*')
    assert response.status_code == 200, response.text
    assert int(response.headers["content-length"]) == len(response.content)
    sent = [pydicom.dcmread(BytesIO(body)) for _, body in parts(response)]
    expected = [pydicom.dcmread(p) for p in cines]
    assert sorted((ds.SOPInstanceUID, ds.PixelData) for ds in sent) == sorted(
        (ds.SOPInstanceUID, ds.PixelData) for ds in expected
    )
    assert max(len(body) for _, body in parts(response)) > INLINE_BYTES
