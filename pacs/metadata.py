"""Per-series DICOM JSON metadata (WADO-RS /metadata), built once per version of a series.

A series' version is the digest of its instances' SOP Instance UIDs and SHA-256s, read from the
index: any stored, replaced or removed instance changes it, so a cached body is never stale and
needs no invalidation. The body is kept gzip-compressed in the index, and the version is the
HTTP ETag. BulkDataURIs in the cached body start with a placeholder that is replaced by the
API's public root when the body is sent, so the cache does not depend on how a client (or which
node) was addressed.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from io import BytesIO
from typing import Any

from pydicom import dcmread
from pydicom.dataelem import DataElement
from sqlalchemy import select

from pacs.facilities import Scope
from pacs.index.records import insert_for
from pacs.index.schema import instance, series, series_metadata, study
from pacs.ingest import Archive

# Binary values at least this long are left out of metadata and offered as bulk data.
BULK_DATA_THRESHOLD = 1024
# Where a cached BulkDataURI starts; replaced by the DICOMweb root when sent. Matched with the
# JSON key in front, so no attribute value can be mistaken for it.
BASE_PLACEHOLDER = "pacs-base:"
_PLACEHOLDER_JSON = b'"BulkDataURI":"' + BASE_PLACEHOLDER.encode()
# zlib's default: a series' body is compressed once (per version and DICOMweb root) and then
# sent many times, so the smaller result is worth the time.
GZIP_LEVEL = 6
# The body stored in the index has been built this way (rows built otherwise are rebuilt).
_CACHE_FORMAT = BASE_PLACEHOLDER


@dataclass(frozen=True)
class SeriesMetadata:
    etag: str
    body_gzip: bytes

    def body(self, base_url: str) -> bytes:
        """The DICOM JSON body, BulkDataURIs starting with *base_url* (the DICOMweb root)."""
        escaped = json.dumps(base_url)[1:-1]  # a URL inside a JSON string
        replacement = b'"BulkDataURI":"' + escaped.encode()
        return gzip.decompress(self.body_gzip).replace(_PLACEHOLDER_JSON, replacement)

    def body_gzip_for(self, base_url: str) -> bytes:
        """:meth:`body`, gzip-compressed (what a client that accepts gzip is sent)."""
        return gzip.compress(self.body(base_url), compresslevel=GZIP_LEVEL)

    def json(self, base_url: str) -> list[Any]:
        return list(json.loads(self.body(base_url)))


def bulk_data_url(base_url: str) -> Callable[[str, str, str, int], str]:
    """BulkDataURIs under *base_url* (PS3.18 10.4.1.1.5: the study/series/instance/tag path)."""

    def url(study: str, series: str, instance: str, tag: int) -> str:
        return f"{base_url}/studies/{study}/series/{series}/instances/{instance}/bulkdata/{tag:08X}"

    return url


def series_metadata_of(
    archive: Archive, scope: Scope, StudyInstanceUID: str, SeriesInstanceUID: str
) -> SeriesMetadata | None:
    """The metadata of a series of a study *scope* sees, from the cache or built now (None: no
    such series, or its study is another facility's: the cache never crosses facilities)."""
    with archive.db.read() as conn:
        row = conn.execute(
            select(
                series.c.id,
                series_metadata.c.etag,
                series_metadata.c.base_url,
                series_metadata.c.body_gzip,
            )
            .join(study, study.c.id == series.c.study_fk)
            .outerjoin(series_metadata, series_metadata.c.series_fk == series.c.id)
            .where(
                series.c.series_instance_uid == SeriesInstanceUID,
                study.c.study_instance_uid == StudyInstanceUID,
                scope.study_condition(),
            )
        ).one_or_none()
        if row is None:
            return None
        series_pk = int(row.id)
        members = conn.execute(
            select(instance.c.sop_instance_uid, instance.c.sha256, instance.c.blob_key)
            .where(instance.c.series_fk == series_pk)
            .order_by(instance.c.instance_number, instance.c.sop_instance_uid)
        ).all()
    version = hashlib.sha256()
    for sop_uid, sha256, _ in members:
        version.update(f"{sop_uid}:{sha256};".encode())
    etag = version.hexdigest()
    if row.etag == etag and row.base_url == _CACHE_FORMAT:
        return SeriesMetadata(etag, bytes(row.body_gzip))

    placeholder = bulk_data_url(BASE_PLACEHOLDER)
    documents = [
        instance_json(archive.blobs.get(blob_key), placeholder) for _, _, blob_key in members
    ]
    body = gzip.compress(
        json.dumps(documents, separators=(",", ":")).encode(), compresslevel=GZIP_LEVEL
    )
    values = {
        "etag": etag,
        "base_url": _CACHE_FORMAT,
        "body_gzip": body,
        "built_at": datetime.now(UTC),
    }
    with archive.db.write() as conn:
        statement = insert_for(conn)(series_metadata).values(series_fk=series_pk, **values)
        conn.execute(statement.on_conflict_do_update(index_elements=["series_fk"], set_=values))
    return SeriesMetadata(etag, body)


def instance_json(
    blob: bytes, bulk_data_url: Callable[[str, str, str, int], str]
) -> dict[str, Any]:
    """DICOM JSON of one stored instance, large binary values as BulkDataURI; elements that
    cannot be encoded (malformed values) are left out."""
    ds = dcmread(BytesIO(blob))
    uids = str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)

    def bulk(element: DataElement) -> str:
        return bulk_data_url(*uids, int(element.tag))

    try:
        return dict(
            ds.to_json_dict(bulk_data_threshold=BULK_DATA_THRESHOLD, bulk_data_element_handler=bulk)
        )
    except Exception:  # pydicom raises many types for a malformed value
        # An instance is stored as received, malformed optional values included
        # (pacs.instance): an element with no DICOM JSON form (a DS of "1\\", an odd-length
        # US, ...) is left out, with a warning in the log, rather than failing the response.
        # Only then: pydicom's suppression reads strictly and would drop merely odd values.
        return dict(
            ds.to_json_dict(
                bulk_data_threshold=BULK_DATA_THRESHOLD,
                bulk_data_element_handler=bulk,
                suppress_invalid_tags=True,
            )
        )
