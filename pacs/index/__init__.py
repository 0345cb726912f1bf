"""The SQL index: schema, migrations, the write path of ingest and read-side queries."""

from pacs.index.database import Database, as_utc
from pacs.index.migrate import check_at_head, upgrade
from pacs.index.queries import (
    Change,
    Counts,
    IndexedBlob,
    SeriesInStudy,
    VersionBlob,
    changes,
    counts,
    indexed_blobs,
    series_of_study,
    version_blobs,
)
from pacs.index.records import BlobRef, Outcome, Recorded, SourceRow, StoredVersion

__all__ = [
    "BlobRef",
    "Change",
    "Counts",
    "Database",
    "IndexedBlob",
    "Outcome",
    "Recorded",
    "SeriesInStudy",
    "SourceRow",
    "StoredVersion",
    "VersionBlob",
    "as_utc",
    "changes",
    "check_at_head",
    "counts",
    "indexed_blobs",
    "series_of_study",
    "upgrade",
    "version_blobs",
]
