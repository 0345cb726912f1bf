"""Blob store on S3 through the MinIO client (MinIO in production, any S3 API in tests)."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from io import BytesIO
from typing import Any

import urllib3
from minio import Minio
from minio.error import MinioException, S3Error

from pacs.errors import StorageUnavailable
from pacs.storage.base import BlobEntry, is_blob_key

# A stalled endpoint must fail a store in seconds (the peer then gets 0xA700), not hang it.
_TIMEOUT = urllib3.Timeout(connect=5.0, read=60.0)
_RETRIES = urllib3.Retry(total=2, backoff_factor=0.2, status_forcelist=(500, 502, 503, 504))
# HEAD requests a retrieval's size check has in flight at once (a round trip each).
SIZE_CHECKS = 8
_ERRORS = (MinioException, urllib3.exceptions.HTTPError, OSError, ValueError)


class S3Store:
    """Blobs as objects in one bucket, created on first use when missing."""

    def __init__(
        self,
        bucket: str,
        endpoint: str,
        access_key: str | None,
        secret_key: str | None,
        secure: bool = True,
        region: str | None = None,
    ) -> None:
        self.bucket = bucket
        self.url = f"s3://{bucket}?endpoint={endpoint}&secure={str(secure).lower()}"
        http = urllib3.PoolManager(timeout=_TIMEOUT, retries=_RETRIES, maxsize=64)
        self.client = Minio(
            endpoint,
            access_key=access_key,
            secret_key=secret_key,
            secure=secure,
            region=region,
            http_client=http,
        )
        try:
            if not self.client.bucket_exists(bucket):
                self.client.make_bucket(bucket)
        except S3Error as exc:
            if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise StorageUnavailable(f"cannot create bucket {bucket}: {exc}") from exc
        except _ERRORS as exc:
            raise StorageUnavailable(f"cannot reach S3 endpoint {endpoint}: {exc}") from exc

    def put(self, key: str, data: bytes) -> None:
        _check_key(key)
        try:
            # put_object returns after the PUT completed: S3 acknowledges only durable objects.
            self.client.put_object(
                self.bucket, key, BytesIO(data), len(data), content_type="application/dicom"
            )
        except _ERRORS as exc:
            raise StorageUnavailable(f"cannot write blob {key}: {exc}") from exc

    def get(self, key: str) -> bytes:
        _check_key(key)
        response: Any = None
        try:
            response = self.client.get_object(self.bucket, key)
            return bytes(response.read())
        except _ERRORS as exc:
            raise StorageUnavailable(f"cannot read blob {key}: {exc}") from exc
        finally:
            if response is not None:
                response.close()
                response.release_conn()

    def exists(self, key: str) -> bool:
        _check_key(key)
        try:
            self.client.stat_object(self.bucket, key)
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject", "ResourceNotFound"):
                return False
            raise StorageUnavailable(f"cannot stat blob {key}: {exc}") from exc
        except _ERRORS as exc:
            raise StorageUnavailable(f"cannot stat blob {key}: {exc}") from exc
        return True

    def size(self, key: str) -> int | None:
        _check_key(key)
        try:
            found = self.client.stat_object(self.bucket, key)
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject", "ResourceNotFound"):
                return None
            raise StorageUnavailable(f"cannot stat blob {key}: {exc}") from exc
        except _ERRORS as exc:
            raise StorageUnavailable(f"cannot stat blob {key}: {exc}") from exc
        return int(found.size or 0)

    def sizes(self, keys: list[str]) -> list[int | None]:
        """One HEAD request per key, SIZE_CHECKS at a time (a round trip each)."""
        with ThreadPoolExecutor(max_workers=SIZE_CHECKS) as pool:
            return list(pool.map(self.size, keys))

    def delete(self, key: str) -> None:
        _check_key(key)
        try:
            self.client.remove_object(self.bucket, key)
        except _ERRORS as exc:
            raise StorageUnavailable(f"cannot delete blob {key}: {exc}") from exc

    def list(self) -> Iterator[BlobEntry]:
        try:
            for obj in self.client.list_objects(self.bucket, recursive=True):
                modified = obj.last_modified or datetime.now(UTC)
                yield BlobEntry(key=obj.object_name, size=obj.size or 0, modified=modified)
        except _ERRORS as exc:
            raise StorageUnavailable(f"cannot list bucket {self.bucket}: {exc}") from exc

    def remove_stray(self, key: str) -> None:
        try:
            self.client.remove_object(self.bucket, key)
        except _ERRORS as exc:
            raise StorageUnavailable(f"cannot delete object {key}: {exc}") from exc

    def check(self) -> None:
        try:
            found = self.client.bucket_exists(self.bucket)
        except _ERRORS as exc:
            raise StorageUnavailable(f"S3 bucket {self.bucket} unreachable: {exc}") from exc
        if not found:  # an endpoint that lost its data, or another endpoint: nothing to read
            raise StorageUnavailable(f"S3 bucket {self.bucket} does not exist")


def _check_key(key: str) -> None:
    if not is_blob_key(key):
        raise ValueError(f"not a blob key: {key!r}")
