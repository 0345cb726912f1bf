"""Series metadata as sent to clients that accept gzip, kept in memory.

The index caches a series' metadata gzip-compressed, with a placeholder where each BulkDataURI
starts (:mod:`pacs.metadata`): a body for a client is that one with the DICOMweb root put in,
which a gzip-accepting client (every browser) would otherwise cost a decompression and a
compression per request. :class:`CompressedBodies` keeps the result per series version (the
ETag, a digest of the series' instances) and root, so it is made once and then sent as it is;
a new version is a new key, and the least recently sent bodies go first past a byte budget.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from pacs.metadata import SeriesMetadata

# Bytes of compressed bodies kept (a 300-instance CT series is about 70 KB).
MAX_BYTES = 64 * 2**20


class CompressedBodies:
    """Gzip bodies of series metadata by (ETag, DICOMweb root), least recently sent evicted."""

    def __init__(self, max_bytes: int = MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self._bodies: OrderedDict[tuple[str, str], bytes] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def get(self, metadata: SeriesMetadata, base_url: str) -> bytes:
        """The gzip body of *metadata* with BulkDataURIs under *base_url*."""
        key = (metadata.etag, base_url)
        with self._lock:
            found = self._bodies.get(key)
            if found is not None:
                self._bodies.move_to_end(key)
                return found
        body = metadata.body_gzip_for(base_url)  # outside the lock: other series go on
        with self._lock:
            if key not in self._bodies:
                self._bodies[key] = body
                self._size += len(body)
            while self._size > self.max_bytes and self._bodies:
                _, evicted = self._bodies.popitem(last=False)
                self._size -= len(evicted)
        return body


def accepts_gzip(accept_encoding: str | None) -> bool:
    """Whether an Accept-Encoding header (RFC 9110 12.5.3) admits gzip: named, or ``*``, with
    a q-value above 0."""
    for item in (accept_encoding or "").split(","):
        coding, _, params = item.partition(";")
        if coding.strip().lower() not in ("gzip", "x-gzip", "*"):
            continue
        q = params.strip().lower().removeprefix("q=").strip() if params.strip() else "1"
        try:
            return float(q) > 0
        except ValueError:
            return False
    return False
