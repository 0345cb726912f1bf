"""The blob store interface and the one place blob keys are made."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from pacs.uids import is_valid_uid

KEY_SUFFIX = ".dcm"
# Hex digits of the SHA-256 in a key: enough to tell versions of one instance apart.
KEY_DIGEST_CHARS = 16


def blob_key(
    StudyInstanceUID: str, SeriesInstanceUID: str, SOPInstanceUID: str, sha256: str
) -> str:
    """Return the key of one version of an instance, from validated UIDs and its digest only.

    ``STUDY/SERIES/SOP.DIGEST.dcm``: no file name or other free text ever reaches a key, and a
    new version of an instance gets a new key, so replacing it never overwrites the blob that
    the index still points to.
    """
    for uid in (StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID):
        if not is_valid_uid(uid):
            raise ValueError(f"not a valid UID: {uid!r}")
    digest = sha256[:KEY_DIGEST_CHARS]
    if len(digest) != KEY_DIGEST_CHARS or not all(c in "0123456789abcdef" for c in digest):
        raise ValueError(f"not a SHA-256 hex digest: {sha256!r}")
    return f"{StudyInstanceUID}/{SeriesInstanceUID}/{SOPInstanceUID}.{digest}{KEY_SUFFIX}"


def is_blob_key(key: str) -> bool:
    """True when *key* has the shape blob_key() makes (temporary files and strays are not)."""
    parts = key.split("/")
    if len(parts) != 3 or not parts[2].endswith(KEY_SUFFIX):
        return False
    sop, _, digest = parts[2][: -len(KEY_SUFFIX)].rpartition(".")
    return (
        is_valid_uid(parts[0])
        and is_valid_uid(parts[1])
        and is_valid_uid(sop)
        and len(digest) == KEY_DIGEST_CHARS
    )


@dataclass(frozen=True)
class BlobEntry:
    key: str
    size: int
    modified: datetime


class BlobStore(Protocol):
    """Durable storage of instance blobs by key.

    ``put`` returns only when the blob is durable (fsync'd file, completed PUT); a blob is
    either entirely there or not there at all. Errors are raised as StorageUnavailable.
    """

    url: str

    def put(self, key: str, data: bytes) -> None: ...

    def get(self, key: str) -> bytes: ...

    def exists(self, key: str) -> bool: ...

    def size(self, key: str) -> int | None:
        """The blob's length in bytes; None when there is no such blob."""
        ...

    def sizes(self, keys: list[str]) -> list[int | None]:
        """:meth:`size` of each of *keys*, in order (a retrieval checks every blob first)."""
        ...

    def delete(self, key: str) -> None: ...

    def list(self) -> Iterator[BlobEntry]: ...

    def remove_stray(self, key: str) -> None:
        """Remove something that is not a blob (a temporary file left by a crash)."""
        ...

    def check(self) -> None:
        """Raise StorageUnavailable unless the store can be written to now."""
        ...
