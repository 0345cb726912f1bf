"""DICOMweb against the running server, with dicomweb-client (a real client) and httpx."""

from __future__ import annotations

import httpx
import pydicom
from dicomweb_client.api import DICOMwebClient

from tests.dicom import LIDC_0001, derived, dicom_files, encode
from tests.servers import DATA, PacsServer
from tests.viewer_api.conftest import JPEG, VIETNAMESE


def client(server: PacsServer, token: str) -> DICOMwebClient:
    return DICOMwebClient(f"{server.url}/dicom-web", headers={"Authorization": f"Bearer {token}"})


def test_qido_studies_series_instances(server: PacsServer, reader_token: str) -> None:
    web = client(server, reader_token)
    lidc = pydicom.dcmread(dicom_files(LIDC_0001)[0])
    studies = web.search_for_studies(search_filters={"PatientID": lidc.PatientID})
    assert len(studies) == 1
    study = pydicom.Dataset.from_json(studies[0])
    assert study.StudyInstanceUID == lidc.StudyInstanceUID
    assert study.ModalitiesInStudy == "CT"
    assert int(study.NumberOfStudyRelatedInstances) == 5
    assert study.RetrieveURL.endswith(f"/dicom-web/studies/{lidc.StudyInstanceUID}")
    series = web.search_for_series(study_instance_uid=lidc.StudyInstanceUID)
    assert [s["0020000E"]["Value"][0] for s in series] == [lidc.SeriesInstanceUID]
    instances = web.search_for_instances(
        study_instance_uid=lidc.StudyInstanceUID,
        series_instance_uid=lidc.SeriesInstanceUID,
        fields=["InstanceNumber"],
    )
    assert len(instances) == 5
    assert all("00200013" in i for i in instances)


def test_qido_matching_paging_and_fuzzy_names(server: PacsServer, reader_token: str) -> None:
    web = client(server, reader_token)
    everything = web.search_for_studies()
    assert len(everything) >= 3  # the fixture's three, and what other tests stored since
    assert len(web.search_for_studies(limit=2)) == 2
    assert len(web.search_for_studies(offset=len(everything) - 1)) == 1
    [named] = web.search_for_studies(search_filters={"PatientName": "minh"}, fuzzymatching=True)
    assert pydicom.Dataset.from_json(named).PatientName == VIETNAMESE
    assert web.search_for_studies(search_filters={"PatientName": "minh"}) == []
    assert len(web.search_for_instances(search_filters={"00080060": "CT"})) >= 5


def test_qido_bad_queries_are_400_with_a_reason(server: PacsServer, reader_token: str) -> None:
    headers = {"Authorization": f"Bearer {reader_token}"}
    for query in ("NoSuchKeyword=1", "limit=zero", "StudyDate=-", "Modality=CT"):
        response = httpx.get(f"{server.url}/dicom-web/studies?{query}", headers=headers)
        assert response.status_code == 400, query
        assert response.json()["detail"]
    response = httpx.get(
        f"{server.url}/dicom-web/studies", headers={**headers, "Accept": "text/html"}
    )
    assert response.status_code == 406


def test_wado_retrieves_instances_as_stored(server: PacsServer, reader_token: str) -> None:
    web = client(server, reader_token)
    path = dicom_files(LIDC_0001)[0]
    lidc = pydicom.dcmread(path)
    instance = web.retrieve_instance(
        lidc.StudyInstanceUID,
        lidc.SeriesInstanceUID,
        lidc.SOPInstanceUID,
        media_types=(("application/dicom", "*"),),
    )
    assert instance.PixelData == lidc.PixelData
    series = web.retrieve_series(lidc.StudyInstanceUID, lidc.SeriesInstanceUID)
    assert len(series) == 5
    jpeg = pydicom.dcmread(JPEG)
    [compressed] = web.retrieve_series(
        jpeg.StudyInstanceUID, jpeg.SeriesInstanceUID, media_types=(("application/dicom", "*"),)
    )
    assert compressed.file_meta.TransferSyntaxUID == jpeg.file_meta.TransferSyntaxUID


def test_wado_transfer_syntax_negotiation(server: PacsServer, reader_token: str) -> None:
    headers = {"Authorization": f"Bearer {reader_token}"}
    jpeg = pydicom.dcmread(JPEG)
    url = f"{server.url}/dicom-web/studies/{jpeg.StudyInstanceUID}"
    implicit = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2'
    response = httpx.get(url, headers={**headers, "Accept": implicit})
    assert response.status_code == 200  # decompressed, then encoded as asked
    assert "transfer-syntax=1.2.840.10008.1.2\r\n" in response.text[:2000]
    j2k = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.90'
    refused = httpx.get(url, headers={**headers, "Accept": j2k})
    assert refused.status_code == 406
    assert "transfer-syntax=*" in refused.json()["detail"]
    lidc = pydicom.dcmread(dicom_files(LIDC_0001)[0])
    url = f"{server.url}/dicom-web/studies/{lidc.StudyInstanceUID}"
    response = httpx.get(url, headers={**headers, "Accept": implicit})
    assert response.status_code == 200
    assert "transfer-syntax=1.2.840.10008.1.2\r\n" in response.text[:2000]
    unknown = f"{server.url}/dicom-web/studies/1.2.3.4.5.6"
    assert httpx.get(unknown, headers=headers).status_code == 404
    assert (
        httpx.get(f"{server.url}/dicom-web/studies/not-a-uid", headers=headers).status_code == 400
    )


def test_wado_metadata_and_bulk_data(server: PacsServer, reader_token: str) -> None:
    web = client(server, reader_token)
    lidc = pydicom.dcmread(dicom_files(LIDC_0001)[0])
    metadata = web.retrieve_series_metadata(lidc.StudyInstanceUID, lidc.SeriesInstanceUID)
    assert len(metadata) == 5
    assert {m["00080018"]["Value"][0] for m in metadata} >= {lidc.SOPInstanceUID}
    headers = {"Authorization": f"Bearer {reader_token}"}
    url = (
        f"{server.url}/dicom-web/studies/{lidc.StudyInstanceUID}/series/{lidc.SeriesInstanceUID}"
        f"/instances/{lidc.SOPInstanceUID}/metadata"
    )
    [first] = httpx.get(url, headers=headers).json()
    assert first["00100020"]["Value"][0] == lidc.PatientID
    pixel = first["7FE00010"]
    assert "BulkDataURI" in pixel and "InlineBinary" not in pixel
    response = httpx.get(pixel["BulkDataURI"], headers={"Authorization": f"Bearer {reader_token}"})
    assert response.status_code == 200
    assert lidc.PixelData in response.content


def test_stow_stores_good_parts_and_reports_bad_ones(server: PacsServer) -> None:
    web = client(server, server.token("modality"))
    good = derived(
        DATA / "edge-cases" / "MR_small.dcm", StudyInstanceUID=pydicom.uid.generate_uid()
    )
    response = web.store_instances([good])  # dicomweb-client decodes the PS3.18 response
    assert response.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == good.SOPInstanceUID
    assert "FailedSOPSequence" not in response  # omitted on full success (PS3.18 10.5.3)

    boundary = "b0undary"
    truncated = (DATA / "edge-cases" / "MR_truncated.dcm").read_bytes()
    other_study = encode(derived())
    body = (
        b"".join(
            f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part + b"\r\n"
            for part in (
                encode(
                    derived(
                        StudyInstanceUID=good.StudyInstanceUID,
                        SeriesInstanceUID=pydicom.uid.generate_uid(),
                        PatientID=good.PatientID,
                        PatientName=good.PatientName,
                        PatientSex=good.PatientSex,  # the same patient's, or it is refused
                    )
                ),
                truncated,
                other_study,
            )
        )
        + f"--{boundary}--\r\n".encode()
    )
    headers = {
        "Authorization": f"Bearer {server.token('modality')}",
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
    }
    response = httpx.post(
        f"{server.url}/dicom-web/studies/{good.StudyInstanceUID}", content=body, headers=headers
    )
    assert response.status_code == 202  # some stored, some failed
    result = pydicom.Dataset.from_json(response.json())
    assert len(result.ReferencedSOPSequence) == 1
    reasons = sorted(item.FailureReason for item in result.FailedSOPSequence)
    assert reasons == [0xA900, 0xC000]  # another study; truncated


def stow(server: PacsServer, token: str, *instances: bytes) -> httpx.Response:
    boundary = "v3rsions"
    body = b"".join(
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part + b"\r\n"
        for part in instances
    )
    return httpx.post(
        f"{server.url}/dicom-web/studies",
        content=body + f"--{boundary}--\r\n".encode(),
        headers={
            "Authorization": f"Bearer {token}",
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        },
    )


def test_only_admin_tokens_replace_instances_or_rename_patients(server: PacsServer) -> None:
    modality, admin = server.token("modality"), server.token("admin")
    uids = {"StudyInstanceUID": pydicom.uid.generate_uid(), "PatientID": "STOW-REPLACE"}
    original = derived(PatientName="Doe^Jane", **uids)
    assert stow(server, modality, encode(original)).status_code == 200
    zeroed = derived(SOPInstanceUID=original.SOPInstanceUID, PatientName="Doe^Jane", **uids)
    zeroed.PixelData = bytes(len(zeroed.PixelData))
    renamed = derived(PatientName="Someone^Else", **uids)

    for hostile in (zeroed, renamed):
        refused = stow(server, modality, encode(hostile))
        assert refused.status_code == 409  # none stored (PS3.18 10.5.3)
        [failed] = pydicom.Dataset.from_json(refused.json()).FailedSOPSequence
        assert failed.FailureReason == 0x0124  # Refused: Not Authorized
        assert failed.ReferencedSOPInstanceUID == hostile.SOPInstanceUID

    web = client(server, server.token("radiologist"))
    series = original.SeriesInstanceUID
    back = web.retrieve_instance(uids["StudyInstanceUID"], series, original.SOPInstanceUID)
    assert back.PixelData == original.PixelData  # the modality's zeroed copy changed nothing
    assert stow(server, admin, encode(zeroed)).status_code == 200
    back = web.retrieve_instance(uids["StudyInstanceUID"], series, original.SOPInstanceUID)
    assert back.PixelData == zeroed.PixelData
    listed = server.pacs("versions", original.SOPInstanceUID).stdout.splitlines()
    assert len(listed) == 2
    assert listed[0].endswith("  current")
    assert "superseded" in listed[1] and "by STOW " in listed[1]


def test_stow_limits_and_media_types(server: PacsServer) -> None:
    headers = {"Authorization": f"Bearer {server.token('admin')}"}
    url = f"{server.url}/dicom-web/studies"
    assert (
        httpx.post(
            url, content=b"x", headers={**headers, "Content-Type": "application/json"}
        ).status_code
        == 415
    )
    big = b"--b\r\nContent-Type: application/dicom\r\n\r\n" + bytes(9 * 1024**2) + b"\r\n--b--\r\n"
    too_large = httpx.post(
        url,
        content=big,
        headers={
            **headers,
            "Content-Type": 'multipart/related; type="application/dicom"; boundary=b',
        },
    )
    assert too_large.status_code == 413
    # The archive still serves.
    assert httpx.get(f"{server.url}/healthz").status_code == 200


def test_instances_stored_over_stow_are_byte_identical(server: PacsServer) -> None:
    path = (
        DATA / "transfer-syntaxes" / "CTImage.dcm_JPEG2000TransferSyntax_1.2.840.10008.1.2.4.91.dcm"
    )
    if not path.exists():
        path = next((DATA / "transfer-syntaxes").glob("*4.91*"))
    data = path.read_bytes()
    boundary = "xyz"
    body = (
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    token = server.token("modality", "radiologist")
    response = httpx.post(
        f"{server.url}/dicom-web/studies",
        content=body,
        headers={
            "Authorization": f"Bearer {token}",
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        },
    )
    assert response.status_code == 200
    ds = pydicom.dcmread(path)
    web = client(server, token)
    back = web.retrieve_instance(
        ds.StudyInstanceUID,
        ds.SeriesInstanceUID,
        ds.SOPInstanceUID,
        media_types=(("application/dicom", "*"),),
    )
    assert back.PixelData == ds.PixelData


def test_frames_and_rendered_through_dicomweb_client(server: PacsServer, reader_token: str) -> None:
    web = client(server, reader_token)
    lidc = pydicom.dcmread(dicom_files(LIDC_0001)[0])
    uids = (lidc.StudyInstanceUID, lidc.SeriesInstanceUID, lidc.SOPInstanceUID)
    [frame] = web.retrieve_instance_frames(*uids, frame_numbers=[1])
    assert frame == lidc.PixelData
    rendered = web.retrieve_instance_rendered(*uids, media_types=("image/png",))
    assert rendered.startswith(b"\x89PNG")


def test_cors_lets_a_viewer_on_another_origin_call(server: PacsServer, reader_token: str) -> None:
    origin = {"Origin": "http://viewer.example"}
    preflight = httpx.options(
        f"{server.url}/dicom-web/studies",
        headers=origin
        | {
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "http://viewer.example"
    response = httpx.get(
        f"{server.url}/dicom-web/studies",
        headers=origin | {"Authorization": f"Bearer {reader_token}"},
    )
    assert response.headers["access-control-allow-origin"] == "http://viewer.example"
    # The ETag a client revalidates with, and the If-Match a review action may carry.
    assert "etag" in response.headers["access-control-expose-headers"].lower()
    review = httpx.options(
        f"{server.url}/api/v1/studies/1.2.3/review/sign",
        headers=origin
        | {
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type, if-match",
        },
    )
    assert review.status_code == 200, review.text
    other = httpx.get(f"{server.url}/healthz", headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in other.headers
