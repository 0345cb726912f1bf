"""Blob storage: one interface, a filesystem and an S3 (MinIO) backend."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from pacs.storage.base import BlobEntry, BlobStore, blob_key, is_blob_key
from pacs.storage.filesystem import FilesystemStore
from pacs.storage.s3 import S3Store

__all__ = [
    "BlobEntry",
    "BlobStore",
    "FilesystemStore",
    "S3Store",
    "blob_key",
    "is_blob_key",
    "open_store",
]


def open_store(
    url: str, access_key: str | None = None, secret_key: str | None = None
) -> FilesystemStore | S3Store:
    """Open the blob store named by *url*.

    ``file:///ABSOLUTE/PATH`` or ``s3://BUCKET?endpoint=HOST:PORT&secure=false[&region=R]``.
    """
    parts = urlsplit(url)
    if parts.scheme == "file":
        return FilesystemStore(Path(parts.path))
    if parts.scheme == "s3":
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        if not parts.netloc or "endpoint" not in query:
            raise ValueError("S3 storage URL must be s3://BUCKET?endpoint=HOST:PORT")
        return S3Store(
            bucket=parts.netloc,
            endpoint=query["endpoint"],
            access_key=access_key,
            secret_key=secret_key,
            secure=query.get("secure", "true").lower() not in ("false", "0", "no"),
            region=query.get("region"),
        )
    raise ValueError(f"unsupported storage URL {url!r} (file:// or s3://)")
