import ctypes
import hashlib
import mmap
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from pacs.errors import StorageUnavailable
from pacs.storage import BlobStore, FilesystemStore, blob_key, is_blob_key, open_store
from tests.servers import S3Server

SHA = hashlib.sha256(b"x").hexdigest()
KEY = blob_key("1.2.3", "1.2.3.4", "1.2.3.4.5", SHA)


@pytest.fixture(params=["filesystem", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BlobStore]:
    if request.param == "filesystem":
        yield open_store(f"file://{tmp_path / 'storage'}")
    else:
        s3: S3Server = request.getfixturevalue("s3")
        yield open_store(s3.url(), s3.access_key, s3.secret_key)


def test_put_get_list_delete(store: BlobStore) -> None:
    assert not store.exists(KEY)
    store.put(KEY, b"first version")
    assert store.exists(KEY)
    assert store.get(KEY) == b"first version"
    store.put(KEY, b"second")  # a rewrite is whole, never a mix
    assert store.get(KEY) == b"second"
    assert [(e.key, e.size) for e in store.list()] == [(KEY, 6)]
    store.delete(KEY)
    assert not store.exists(KEY)
    assert list(store.list()) == []
    store.check()


def test_sizes_in_order_none_for_a_missing_blob(store: BlobStore) -> None:
    other = blob_key("1.2.3", "1.2.3.4", "1.2.3.4.6", SHA)
    store.put(KEY, b"four")
    store.put(other, b"sixsix")
    missing = blob_key("1.2.3", "1.2.3.4", "1.2.3.4.7", SHA)
    assert store.sizes([other, missing, KEY]) == [6, None, 4]
    with pytest.raises(ValueError, match="not a blob key"):
        store.sizes(["../outside.dcm"])


def test_keys_come_from_uids_and_digest_only() -> None:
    assert f"1.2.3/1.2.3.4/1.2.3.4.5.{SHA[:16]}.dcm" == KEY
    assert is_blob_key(KEY)
    for bad in ("../../etc", "1.2/../3", "1.2.3 ", ""):
        with pytest.raises(ValueError, match="not a valid UID"):
            blob_key(bad, "1.2", "1.3", SHA)
    with pytest.raises(ValueError, match="SHA-256"):
        blob_key("1.2", "1.2", "1.3", "not-hex-at-all!!")


@pytest.mark.parametrize("key", ["../outside.dcm", "a/b/c.dcm", "1.2/1.3/.tmp-x"])
def test_non_keys_are_refused(store: BlobStore, key: str) -> None:
    for refused in (lambda: store.put(key, b"x"), lambda: store.get(key), lambda: store.size(key)):
        with pytest.raises(ValueError, match="not a blob key"):
            refused()


def test_filesystem_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path)
    store.put(KEY, b"data")
    files = [p.name for p in tmp_path.rglob("*") if p.is_file()]
    assert files == [KEY.rsplit("/", 1)[1]]


def _resident_pages(path: Path) -> int:
    """Pages of *path* in the page cache (mincore(2) on a mapping of it)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]  # fmt: skip
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    size, page = path.stat().st_size, mmap.PAGESIZE
    pages = (size + page - 1) // page
    with path.open("rb") as file:
        address = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, file.fileno(), 0)
        assert address not in (None, ctypes.c_void_p(-1).value), os.strerror(ctypes.get_errno())
        try:
            vector = ctypes.create_string_buffer(pages)
            assert libc.mincore(address, size, vector) == 0, os.strerror(ctypes.get_errno())
            return sum(byte & 1 for byte in vector.raw)
        finally:
            libc.munmap(address, size)


def test_a_written_blob_leaves_the_page_cache(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path)
    data = os.urandom(526 * 1024)  # a CT slice
    store.put(KEY, data)
    path = tmp_path / KEY
    assert _resident_pages(path) == 0
    assert store.get(KEY) == data
    assert _resident_pages(path) > 0  # read, it is cached as any file is


def test_filesystem_get_at_most_reads_only_small_blobs(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path)
    store.put(KEY, b"data")
    assert store.get_at_most(KEY, 4) == b"data"
    assert store.get_at_most(KEY, 3) is None
    store.delete(KEY)
    with pytest.raises(StorageUnavailable, match="cannot read blob"):
        store.get_at_most(KEY, 4)


def test_filesystem_failure_is_storage_unavailable(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path / "storage")
    # A regular file where a directory must go fails even for root.
    (tmp_path / "storage" / "1.2.3").write_bytes(b"")
    with pytest.raises(StorageUnavailable, match="cannot write blob"):
        store.put(KEY, b"data")


def test_s3_bucket_is_created_when_missing(s3: S3Server) -> None:
    url = s3.url("fresh-bucket-for-test")
    first = open_store(url, s3.access_key, s3.secret_key)
    first.put(KEY, b"data")
    again = open_store(url, s3.access_key, s3.secret_key)  # existing bucket is fine
    assert again.get(KEY) == b"data"


def test_unreachable_s3_is_storage_unavailable() -> None:
    from tests.servers import free_port

    with pytest.raises(StorageUnavailable, match="cannot reach S3"):
        open_store(f"s3://bucket?endpoint=127.0.0.1:{free_port()}&secure=false", "a", "b")


def test_unknown_storage_url_is_refused() -> None:
    with pytest.raises(ValueError, match="unsupported storage URL"):
        open_store("ftp://somewhere")
    with pytest.raises(ValueError, match="endpoint"):
        open_store("s3://bucket")
