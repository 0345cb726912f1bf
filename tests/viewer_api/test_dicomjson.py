"""DICOM JSON of search matches: the direct encoding gives what pydicom gives, byte for byte."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydicom.dataset import Dataset

from viewer_api.dicomjson import from_match


def pydicom_json(match: dict[str, Any], retrieve_url: str | None) -> dict[str, Any]:
    """The encoding from_match replaced: a pydicom Dataset of the match, to_json_dict."""
    ds = Dataset()
    for keyword, value in match.items():
        if value is None or value == "":
            setattr(ds, keyword, None)
        elif keyword == "ModalitiesInStudy":
            ds.ModalitiesInStudy = str(value).split("\\")
        else:
            setattr(ds, keyword, value)
    if retrieve_url is not None:
        ds.RetrieveURL = retrieve_url
    return dict(ds.to_json_dict())


MATCHES = [
    {  # an instance, as the index gives it
        "SOPInstanceUID": "1.2.840.113619.2.55.3.1234",
        "SOPClassUID": "1.2.840.10008.5.1.4.1.1.2",
        "InstanceNumber": 17,
        "Rows": 512,
        "Columns": 512,
        "NumberOfFrames": None,
        "StudyInstanceUID": "1.2.3",
        "SeriesInstanceUID": "1.2.3.4",
    },
    {"SOPInstanceUID": "1.2.3.5", "InstanceNumber": 0, "Rows": "", "NumberOfFrames": 3},
    {  # a study: person names, dates, lists, counts
        "StudyInstanceUID": "1.2.3",
        "StudyDate": "20240102",
        "StudyTime": "101500.25",
        "AccessionNumber": "",
        "ModalitiesInStudy": "CT\\SR",
        "ReferringPhysicianName": "Doe^Jane=ドウ^ジェーン",
        "PatientName": "Müller^Hans",
        "PatientID": " id with spaces ",
        "PatientBirthDate": None,
        "PatientSex": "O",
        "StudyID": "S1",
        "NumberOfStudyRelatedSeries": 2,
        "NumberOfStudyRelatedInstances": 301,
        "SOPClassesInStudy": "1.2.840.10008.5.1.4.1.1.2\\1.2.840.10008.5.1.4.1.1.88.34",
    },
    {  # values that are not the plain kinds: left to pydicom
        "SeriesInstanceUID": "1.2.3.4 ",
        "SeriesNumber": "7",
        "Modality": "CT",
        "SeriesDescription": "a\\b",
        "InstanceNumber": True,
    },
]


@pytest.mark.parametrize("match", MATCHES)
@pytest.mark.parametrize("url", [None, "http://pacs.example/dicom-web/studies/1.2.3", " x\\y "])
def test_from_match_is_pydicoms_json(match: dict[str, Any], url: str | None) -> None:
    for _ in range(2):  # the second time from the caches
        ours = from_match(match, url)
        assert json.dumps(ours, ensure_ascii=False) == json.dumps(
            pydicom_json(match, url), ensure_ascii=False
        )
