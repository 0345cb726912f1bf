"""Gzip bodies of series metadata kept per version and DICOMweb root, within a byte budget."""

from __future__ import annotations

import gzip
import json

import pytest

from pacs.metadata import BASE_PLACEHOLDER, SeriesMetadata
from viewer_api.compressed import CompressedBodies, accepts_gzip


def metadata(etag: str, instances: int = 50) -> SeriesMetadata:
    documents = [
        {"7FE00010": {"vr": "OW", "BulkDataURI": f"{BASE_PLACEHOLDER}/studies/1/series/{n}"}}
        for n in range(instances)
    ]
    return SeriesMetadata(
        etag, gzip.compress(json.dumps(documents, separators=(",", ":")).encode())
    )


def test_a_body_is_made_once_per_version_and_root() -> None:
    bodies = CompressedBodies()
    v1 = metadata("v1")
    first = bodies.get(v1, "http://a/dicom-web")
    assert bodies.get(v1, "http://a/dicom-web") is first
    assert gzip.decompress(first) == v1.body("http://a/dicom-web")
    assert b"http://b/dicom-web" in gzip.decompress(bodies.get(v1, "http://b/dicom-web"))
    assert bodies.get(metadata("v2", 3), "http://a/dicom-web") is not first


def test_least_recently_sent_bodies_go_first_past_the_budget() -> None:
    one = len(metadata("x").body_gzip_for("http://a"))
    bodies = CompressedBodies(max_bytes=2 * one)
    a, b, c = (metadata(etag) for etag in "abc")
    kept_a = bodies.get(a, "http://a")
    bodies.get(b, "http://a")
    assert bodies.get(a, "http://a") is kept_a  # a is now the most recent
    bodies.get(c, "http://a")  # over budget: b goes
    assert bodies.get(a, "http://a") is kept_a
    assert bodies._size <= 2 * one and list(bodies._bodies) == [
        ("c", "http://a"),
        ("a", "http://a"),
    ]


@pytest.mark.parametrize(
    ("header", "accepted"),
    [
        ("gzip", True),
        ("gzip, deflate, br", True),
        ("br;q=1.0, gzip;q=0.8", True),
        ("*", True),
        ("GZIP", True),
        ("gzip;q=0", False),
        ("gzip; q=0.0, identity", False),
        ("identity", False),
        ("deflate", False),
        ("", False),
        (None, False),
    ],
)
def test_accept_encoding(header: str | None, accepted: bool) -> None:
    assert accepts_gzip(header) is accepted
