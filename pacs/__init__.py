"""Archive core: DIMSE server, blob storage, SQL index and the one ingest path."""

from pacs.errors import ArchiveError, InvalidInstance, StorageUnavailable
from pacs.ingest import Archive, Source, StoreResult

__all__ = [
    "Archive",
    "ArchiveError",
    "InvalidInstance",
    "Source",
    "StorageUnavailable",
    "StoreResult",
]
