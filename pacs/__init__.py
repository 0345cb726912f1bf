"""Archive core: DIMSE server, blob storage, SQL index and the one ingest path.

The names below load on first use (PEP 562), so a process that needs only part of the
package (``pacs send`` needs pydicom and pynetdicom, not the index) does not import the rest.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

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


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'pacs' has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)
