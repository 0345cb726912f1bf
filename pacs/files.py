"""Files that hold patient data or secrets: directories 0700, files 0600, secrets checked.

``PACS_HOME``, the SQLite index, the blob store and the JWT secret are the archive's alone;
other local users (a shared host, a compromised service account) must not read them. Modes
are set explicitly rather than left to the umask of whoever started the process: a file is
created with ``os.open(..., 0o600)`` (the umask can only take bits away), a directory is
chmod'ed after ``mkdir``. Existing directories and files are left as they are: an operator may
have widened them on purpose (a backup group); only secrets are refused when others may read.
"""

from __future__ import annotations

import errno
import os
import stat
import uuid
from collections.abc import Callable
from pathlib import Path

from pacs.errors import UnsafeSecret

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


def make_private_dirs(path: Path, under: Path | None = None) -> list[Path]:
    """Create *path* and its missing parents, each 0700.

    Parameters
    ----------
    path : Path
        The directory wanted.
    under : Path, optional
        A directory that must exist already (a storage root): it is never made again, so a
        volume that went away is an error, not a fresh empty tree.

    Returns
    -------
    list of Path
        The directories that were missing, outermost first (made here, or by another thread
        at the same moment): their parents are the ones to fsync.

    Raises
    ------
    OSError
        A component cannot be created, exists and is not a directory, or *under* is missing.
    """
    missing: list[Path] = []
    while not path.is_dir():
        if path == under:
            raise FileNotFoundError(errno.ENOENT, "directory missing", str(path))
        missing.append(path)
        path = path.parent
    missing.reverse()
    for directory in missing:
        try:
            directory.mkdir(mode=PRIVATE_DIR)
        except FileExistsError:
            if not directory.is_dir():
                raise
            continue  # made at the same moment by another thread or process, which sets it
        directory.chmod(PRIVATE_DIR)
    return missing


def create_private_file(path: Path, data: bytes = b"") -> bool:
    """Create *path* (0600) holding *data* unless it exists; True when this call made it.

    The file appears whole or not at all (written aside, then hard-linked into place), so a
    process starting at the same moment never reads it half-written.
    """
    aside = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.link(aside, path)
    except FileExistsError:
        return False
    finally:
        aside.unlink(missing_ok=True)
    return True


def read_secret(path: Path, min_bytes: int) -> bytes:
    """The bytes of a secret file, refused when group or others have any access to it, or
    when it is shorter than *min_bytes* (a short HMAC key can be brute-forced offline from
    one token).

    Raises
    ------
    UnsafeSecret
        The file's mode or length; the message says how to fix it.
    """
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise UnsafeSecret(
            f"{path} is open to group or others (mode {mode:04o}): run chmod 600 {path}"
        )
    data = path.read_bytes()
    if len(data) < min_bytes:
        raise UnsafeSecret(
            f"{path} holds {len(data)} bytes, a secret needs at least {min_bytes}: "
            "replace it with random bytes (e.g. head -c 32 /dev/urandom), or remove it to have "
            "one generated (tokens signed with the old one stop working)"
        )
    return data


def load_secret(
    own: Path, shared: Path | None, setting: str, min_bytes: int, make: Callable[[], bytes]
) -> bytes:
    """A secret of the archive: the file *shared* names (the *setting*, one file every node of
    a site reads; never made here), else *own* in the archive's home, made with *make()* on
    first use (0600 in a 0700 directory).

    Raises
    ------
    UnsafeSecret
        *shared* is not a file, or the file is open to group or others, or too short.
    """
    if shared is not None:
        if not shared.is_file():
            raise UnsafeSecret(f"{setting} {shared} is not a file")
        return read_secret(shared, min_bytes)
    make_private_dirs(own.parent)
    create_private_file(own, make())
    return read_secret(own, min_bytes)
