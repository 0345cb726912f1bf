"""Blob store on a local filesystem: atomic writes (temporary file, fsync, rename, fsync dir)."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from pacs.errors import StorageUnavailable
from pacs.files import PRIVATE_FILE, make_private_dirs
from pacs.storage.base import BlobEntry, is_blob_key

_TMP_PREFIX = ".tmp-"
# File systems whose reads wait on a network (a hung server hangs the reader): blobs on them
# are never read on an event loop (FilesystemStore.local).
NETWORK_FILESYSTEMS = frozenset(
    ("nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "ceph", "glusterfs", "lustre", "gpfs", "afs")
)
MOUNTINFO = Path("/proc/self/mountinfo")


def _leave_page_cache(fd: int) -> None:
    """Drop a blob's pages from the page cache once they are on disk.

    An archive reads back little of what it receives soon (the detector reads a CT once, a
    radiologist views it once, both at ~600 MB/s from this machine's disk when not cached);
    kept, every received byte pushes out pages that are read (the index, studies being
    viewed). Dropped, they are the next blob's pages: on this VM a write that needs pages the
    kernel has not used for a while (the hypervisor has taken them back) spent most of the
    server's CPU copying into them (perf: ``copy_folio_from_iter_atomic``, 2-8 ms of system
    time per CT slice instead of ~0.7; MinIO writes with O_DIRECT for much the same reasons).
    Advice only: where a file system ignores it, nothing changes.
    """
    if hasattr(os, "posix_fadvise"):
        with contextlib.suppress(OSError):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


def on_local_disk(path: Path, mountinfo: str | None = None) -> bool:
    """Whether *path* lies on a local file system: the mount it is under (the longest mount
    point containing it, from /proc/self/mountinfo or *mountinfo*) is not a network file
    system nor FUSE (sshfs, s3fs, ...). False when that cannot be told (no /proc)."""
    try:
        text = MOUNTINFO.read_text() if mountinfo is None else mountinfo
    except OSError:
        return False
    best, kind = "", None
    target = str(path)
    for line in text.splitlines():
        fields = line.split()
        if "-" not in fields[6:]:
            continue
        point = fields[4].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, fields[fields.index("-", 6) + 1]
    return kind is not None and kind not in NETWORK_FILESYSTEMS and not kind.startswith("fuse")


class FilesystemStore:
    """Blobs as files under *root*, one directory per study and series; directories it makes
    are 0700 and blobs 0600 (patient data, for the archive's user alone)."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self._root = str(self.root)
        self.url = f"file://{self.root}"
        # Reads may run on an event loop (a page-cache read: ~0.1 ms per MB), not over a network.
        self.local = on_local_disk(self.root)
        try:
            make_private_dirs(self.root)
        except OSError as exc:
            raise StorageUnavailable(f"cannot create storage root {self.root}: {exc}") from exc

    def _path(self, key: str) -> Path:
        if not is_blob_key(key):
            raise ValueError(f"not a blob key: {key!r}")
        return self.root / key

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        tmp = path.parent / f"{_TMP_PREFIX}{uuid.uuid4().hex}"
        try:
            created = [made.parent for made in make_private_dirs(path.parent, under=self.root)]
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
            try:
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                os.fsync(fd)
                _leave_page_cache(fd)
            finally:
                os.close(fd)
            tmp.replace(path)
            # The rename, and any directory created for it, are durable once their parent
            # directories are synced.
            for directory in [path.parent, *created]:
                _fsync_dir(directory)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise StorageUnavailable(f"cannot write blob {key}: {exc}") from exc

    def _file(self, key: str) -> str:
        """:meth:`_path` as a string: what reads need, without pathlib's parsing (a series
        retrieval asks for hundreds)."""
        if not is_blob_key(key):
            raise ValueError(f"not a blob key: {key!r}")
        return f"{self._root}/{key}"

    def get(self, key: str) -> bytes:
        try:
            with open(self._file(key), "rb") as blob:  # noqa: PTH123 - see _file
                return blob.read()
        except OSError as exc:
            raise StorageUnavailable(f"cannot read blob {key}: {exc}") from exc

    def get_at_most(self, key: str, limit: int) -> bytes | None:
        """The blob when it holds at most *limit* bytes (one open, one fstat, one read); None
        when it is larger."""
        try:
            with open(self._file(key), "rb") as blob:  # noqa: PTH123 - see _file
                if os.fstat(blob.fileno()).st_size > limit:
                    return None
                return blob.read()
        except OSError as exc:
            raise StorageUnavailable(f"cannot read blob {key}: {exc}") from exc

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int | None:
        try:
            return os.stat(self._file(key)).st_size  # noqa: PTH116 - see _file
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageUnavailable(f"cannot stat blob {key}: {exc}") from exc

    def sizes(self, keys: list[str]) -> list[int | None]:
        """One stat each, in this thread (a stat costs less than handing it to another)."""
        return [self.size(key) for key in keys]

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink(missing_ok=True)
            _fsync_dir(path.parent)
        except OSError as exc:
            raise StorageUnavailable(f"cannot delete blob {key}: {exc}") from exc

    def list(self) -> Iterator[BlobEntry]:
        """Every blob key under the root, temporary files of interrupted writes included."""
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                path = Path(dirpath) / name
                try:
                    stat = path.stat()
                except FileNotFoundError:  # removed while listing
                    continue
                yield BlobEntry(
                    key=path.relative_to(self.root).as_posix(),
                    size=stat.st_size,
                    modified=datetime.fromtimestamp(stat.st_mtime, UTC),
                )

    def remove_stray(self, key: str) -> None:
        """Remove a file that is not a blob (e.g. a temporary file left by a crash)."""
        path = (self.root / key).resolve()
        if self.root not in path.parents:
            raise ValueError(f"outside the storage root: {key!r}")
        path.unlink(missing_ok=True)

    def check(self) -> None:
        probe = self.root / f"{_TMP_PREFIX}probe-{uuid.uuid4().hex}"
        try:
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE))
            probe.unlink()
        except OSError as exc:
            raise StorageUnavailable(f"storage root {self.root} is not writable: {exc}") from exc


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
