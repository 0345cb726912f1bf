"""What lets the API read on its event loop: blobs on a local disk (not NFS, SMB, FUSE), and
index connections that are never waited for."""

from __future__ import annotations

import time
from contextlib import ExitStack
from pathlib import Path

from pacs.index import Database
from pacs.storage import FilesystemStore
from pacs.storage.filesystem import on_local_disk

MOUNTS = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 253:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
40 27 0:50 / /srv/pacs rw,relatime shared:20 - nfs4 filer:/export/pacs rw,vers=4.2
41 40 253:2 / /srv/pacs/local rw,relatime - xfs /dev/vdb1 rw
42 27 0:51 / /mnt/smb\\040share rw - cifs //nas/share rw
43 27 0:52 / /mnt/remote rw,nosuid - fuse.sshfs user@host:/data rw
"""


def test_blobs_under_a_network_or_fuse_mount_are_not_local() -> None:
    assert on_local_disk(Path("/var/lib/pacs"), MOUNTS)  # ext4, the root
    assert not on_local_disk(Path("/srv/pacs/blobs"), MOUNTS)  # NFS
    assert on_local_disk(Path("/srv/pacs/local/blobs"), MOUNTS)  # xfs mounted inside it
    assert on_local_disk(Path("/srv/pacsdata"), MOUNTS)  # not under /srv/pacs: the root
    assert not on_local_disk(Path("/mnt/smb share/x"), MOUNTS)
    assert not on_local_disk(Path("/mnt/remote/x"), MOUNTS)
    assert not on_local_disk(Path("/x"), "")  # nothing known: not local


def test_a_store_on_this_machines_disk_is_local(tmp_path: Path) -> None:
    assert FilesystemStore(tmp_path / "blobs").local


def test_sqlite_connections_are_never_waited_for(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'index.db'}")
    started = time.monotonic()
    with ExitStack() as held:
        connections = [held.enter_context(db.read()) for _ in range(60)]
        assert len({id(c) for c in connections}) == 60
    assert time.monotonic() - started < 10  # a pool of 15 waited 30 s for the 16th
    db.dispose()
