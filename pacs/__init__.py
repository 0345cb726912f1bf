"""Archive core: DIMSE server, blob storage, SQL index and the one ingest path.

The names below load on first use (PEP 562), so a process that needs only part of the
package (``pacs send`` needs pydicom and pynetdicom, not the index) does not import the rest.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pacs.lazy import lazy_exports

if TYPE_CHECKING:
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

_HOMES = {
    "Archive": "pacs.ingest",
    "ArchiveError": "pacs.errors",
    "InvalidInstance": "pacs.errors",
    "Source": "pacs.ingest",
    "StorageUnavailable": "pacs.errors",
    "StoreResult": "pacs.ingest",
}


__getattr__ = lazy_exports(__name__, _HOMES)
