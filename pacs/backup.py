"""Backup and restore of the index and the blob store (``pacs backup``, ``pacs restore``).

A backup is one folder::

    manifest.json    when, which versions, schema revision, counts, checksums (written last:
                     a folder without it is an unfinished backup)
    index.sqlite     the index snapshot: SQLite's online backup API, or
    index.pgdump     pg_dump's custom format (PostgreSQL), restored with pg_restore
    blobs.sha256     "SHA-256  KEY" per blob the snapshot references (``sha256sum -c`` reads it
                     in ``blobs/``)
    blobs/KEY        those blobs, as stored (absent in an index-only backup)

Order: the index snapshot first, then the blobs it references. A blob is durable before the
index row naming it commits, and blobs are immutable (a new version of an instance gets a new
key), so every row of the snapshot has its blob while the archive keeps receiving. Instances
acknowledged after the snapshot began are not in the backup.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import Connection, create_engine, func, inspect, make_url, select, text
from sqlalchemy.exc import SQLAlchemyError

from pacs.errors import BackupError, StorageUnavailable
from pacs.files import PRIVATE_FILE, make_private_dirs
from pacs.index import Database, indexed_blobs, version_blobs
from pacs.index.migrate import alembic_config
from pacs.index.schema import (
    ai_run,
    audit_event,
    change,
    finding,
    instance,
    instance_version,
    job,
    patient,
    review,
    review_action,
    series,
    study,
)
from pacs.storage import BlobStore, FilesystemStore, is_blob_key

__all__ = ["FORMAT", "BlobCopy", "Manifest", "backup", "read_manifest", "restore"]

FORMAT = "pacs-backup/1"
MANIFEST = "manifest.json"
BLOB_LIST = "blobs.sha256"
BLOB_DIR = "blobs"
SQLITE_FILE = "index.sqlite"
PGDUMP_FILE = "index.pgdump"
# Rows counted into the manifest, and compared after a restore.
COUNTED = {
    "patients": patient,
    "studies": study,
    "series": series,
    "instances": instance,
    "instance_versions": instance_version,
    "changes": change,
    "jobs": job,
    "ai_runs": ai_run,
    "findings": finding,
    "reviews": review,
    "review_actions": review_action,
    "audit_events": audit_event,
}
_CHUNK = 1 << 20


@dataclass(frozen=True)
class BlobCopy:
    """One blob the snapshot references."""

    key: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """What a backup holds (``manifest.json``)."""

    format: str
    started_at: str  # ISO 8601, UTC: the snapshot is of this moment or just after
    finished_at: str
    pacs_version: str
    schema_revision: str
    index_backend: str  # sqlite | postgresql
    index_file: str
    index_sha256: str
    index_tool: str  # what wrote the snapshot, with its version
    counts: dict[str, int]
    blobs: int
    blob_bytes: int
    blobs_included: bool  # False: index only, the store is backed up by its own means
    blob_list_sha256: str
    source_storage: str


def backup(db: Database, blobs: BlobStore, dest: Path, include_blobs: bool = True) -> Manifest:
    """Back up the index of *db* and the blobs it references into the new folder *dest*.

    Safe while the archive runs: the snapshot is one consistent moment (SQLite's backup API
    in one step; pg_dump in an exported REPEATABLE READ snapshot), the blobs are read after it.

    Raises
    ------
    BackupError
        *dest* is not empty, a tool failed, or a referenced blob is gone or no longer matches
        its SHA-256 (the folder then has no manifest).
    """
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise BackupError(f"{dest} is not an empty folder: back up into a new one")
    try:
        return _backup(db, blobs, dest, include_blobs)
    except OSError as exc:  # the backup's own disk: full, unwritable
        raise BackupError(f"cannot write the backup in {dest}: {exc}") from exc


def _backup(db: Database, blobs: BlobStore, dest: Path, include_blobs: bool) -> Manifest:
    make_private_dirs(dest)
    started = _now()
    if db.is_sqlite:
        index_file, tool = SQLITE_FILE, f"SQLite {sqlite3.sqlite_version} online backup API"
        _sqlite_snapshot(_sqlite_path(db.url), dest / index_file, single_file=True)
        engine = create_engine(f"sqlite:///{dest / index_file}")
        try:
            with engine.connect() as conn:
                revision, counts, listed = _inventory(conn)
        finally:
            engine.dispose()
    else:
        index_file = PGDUMP_FILE
        revision, counts, listed, tool = _pg_snapshot(db, dest / index_file)
    list_sha = _write_private(dest / BLOB_LIST, "".join(f"{b.sha256}  {b.key}\n" for b in listed))
    if include_blobs:
        try:
            copies = FilesystemStore(dest / BLOB_DIR)
        except StorageUnavailable as exc:
            raise BackupError(f"the backup cannot be written: {exc}") from exc
        for blob in listed:
            _copy_blob(blobs, blob, copies)
    manifest = Manifest(
        format=FORMAT,
        started_at=started,
        finished_at=_now(),
        pacs_version=_pacs_version(),
        schema_revision=revision,
        index_backend="sqlite" if db.is_sqlite else "postgresql",
        index_file=index_file,
        index_sha256=_sha256_file(dest / index_file),
        index_tool=tool,
        counts=counts,
        blobs=len(listed),
        blob_bytes=sum(b.size for b in listed),
        blobs_included=include_blobs,
        blob_list_sha256=list_sha,
        source_storage=blobs.url,
    )
    _write_private(dest / MANIFEST, json.dumps(asdict(manifest), indent=2) + "\n")
    return manifest


def read_manifest(src: Path) -> Manifest:
    """The manifest of the backup in *src*, checked against the files beside it.

    Raises
    ------
    BackupError
        No manifest (an unfinished backup), an unknown format, or a file whose SHA-256 differs.
    """
    try:
        fields = json.loads((src / MANIFEST).read_text())
        manifest = Manifest(**fields)
    except FileNotFoundError as exc:
        raise BackupError(f"{src} has no {MANIFEST}: not a backup, or an unfinished one") from exc
    except (ValueError, TypeError) as exc:
        raise BackupError(f"{src / MANIFEST} cannot be read: {exc}") from exc
    if manifest.format != FORMAT:
        raise BackupError(f"backup format {manifest.format!r}, this version reads {FORMAT!r}")
    for name, expected in (
        (manifest.index_file, manifest.index_sha256),
        (BLOB_LIST, manifest.blob_list_sha256),
    ):
        if Path(name).name != name or not (src / name).is_file():
            raise BackupError(f"{src} lacks {name!r}")
        if _sha256_file(src / name) != expected:
            raise BackupError(f"{src / name} does not match its SHA-256 in the manifest")
    return manifest


def restore(src: Path, db: Database, blobs: BlobStore, force: bool = False) -> Manifest:
    """Restore the backup in *src* into the index *db* and the store *blobs*.

    The archive must be stopped. Blobs are put first (each checked against its SHA-256),
    then the index, so no restored row ever lacks its blob. The restored index is at the
    backup's schema revision: ``pacs restore`` then migrates it and runs ``pacs fsck``.

    Raises
    ------
    BackupError
        A damaged or incomplete backup, one of the other index backend, a schema revision
        this code does not know, or a target that holds an index or blobs (unless *force*).
    """
    manifest = read_manifest(src)
    backend = "sqlite" if db.is_sqlite else "postgresql"
    if manifest.index_backend != backend:
        raise BackupError(
            f"the backup's index is {manifest.index_backend}, the target is {backend}: "
            "restore into the same kind of database"
        )
    try:
        ScriptDirectory.from_config(alembic_config(db)).get_revision(manifest.schema_revision)
    except CommandError as exc:
        raise BackupError(
            f"schema revision {manifest.schema_revision!r} is unknown to this version: "
            "restore with the version that took the backup (or a newer one)"
        ) from exc
    if not force:  # an index-only backup expects the store to hold its blobs already
        _check_empty(db, blobs if manifest.blobs_included else None)
    listed = list(_blob_list(src / BLOB_LIST))
    if manifest.blobs_included:
        for blob in listed:
            data = _read_checked(src / BLOB_DIR / blob.key, blob)
            blobs.put(blob.key, data)
    else:
        absent = [b.key for b in listed if not blobs.exists(b.key)]
        if absent:
            raise BackupError(
                f"index-only backup: {len(absent)} of its blobs are not in {blobs.url} "
                f"(first: {absent[0]}); restore the store from its own backup first"
            )
    if db.is_sqlite:
        _sqlite_snapshot(src / manifest.index_file, _sqlite_path(db.url), single_file=False)
    else:
        _pg_restore(db, src / manifest.index_file, clean=force)
    with _reading(db) as conn:
        _revision, counts, _listed = _inventory(conn)
    if counts != manifest.counts:
        raise BackupError(f"restored index counts {counts}, the manifest says {manifest.counts}")
    return manifest


# --- the index snapshot ---------------------------------------------------------------------


def _sqlite_path(url: str) -> Path:
    return Path(url.split(":///", 1)[-1])


def _sqlite_snapshot(source: Path, target: Path, single_file: bool) -> None:
    """Copy the database *source* into *target* with SQLite's online backup API, in one step:
    a consistent snapshot while writers go on (WAL), and a correct replacement of *target*'s
    pages (its WAL included) on restore."""
    try:
        src = sqlite3.connect(source, timeout=30)  # it only reads
        try:
            dst = sqlite3.connect(target, timeout=30)
            try:
                src.backup(dst)
                if single_file:  # the backup: one self-contained file, no -wal beside it
                    dst.execute("PRAGMA journal_mode=DELETE")
            finally:
                dst.close()
        finally:
            src.close()
        target.chmod(PRIVATE_FILE)
    except (sqlite3.Error, OSError) as exc:
        raise BackupError(f"SQLite backup of {source} into {target} failed: {exc}") from exc


def _pg_snapshot(db: Database, target: Path) -> tuple[str, dict[str, int], list[BlobCopy], str]:
    """pg_dump (custom format) of the database in a snapshot exported by a REPEATABLE READ
    transaction, whose inventory (revision, counts, blobs) is read in that same snapshot."""
    try:
        with db.engine.connect() as conn:
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                snapshot = conn.execute(text("SELECT pg_export_snapshot()")).scalar_one()
                tool = _run_pg(db, "pg_dump", "--version").strip()
                _run_pg(
                    db,
                    "pg_dump",
                    "--format=custom",
                    f"--snapshot={snapshot}",
                    f"--file={target}",
                )
                revision, counts, listed = _inventory(conn)
    except SQLAlchemyError as exc:
        raise BackupError(f"PostgreSQL snapshot failed: {exc}") from exc
    target.chmod(PRIVATE_FILE)
    return revision, counts, listed, tool


def _pg_restore(db: Database, dump: Path, clean: bool) -> None:
    db.engine.dispose()  # no connection of ours holds a lock pg_restore needs
    _run_pg(
        db,
        "pg_restore",
        "--no-owner",
        "--no-privileges",
        "--single-transaction",
        "--exit-on-error",
        *(["--clean", "--if-exists"] if clean else []),
        str(dump),
    )


def _run_pg(db: Database, tool: str, *args: str) -> str:
    """Run a PostgreSQL client tool against *db* (password in the environment, not argv)."""
    url = make_url(db.url)
    env = {**os.environ}
    if url.password:
        env["PGPASSWORD"] = str(url.password)
    libpq = url.set(drivername="postgresql", password=None).render_as_string(hide_password=False)
    database = [] if "--version" in args else [f"--dbname={libpq}"]
    try:
        done = subprocess.run(
            [tool, *database, *args], env=env, capture_output=True, text=True, check=False
        )
    except OSError as exc:
        raise BackupError(f"{tool} cannot run ({exc}): apt-get install postgresql-client") from exc
    if done.returncode != 0:
        raise BackupError(f"{tool} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return done.stdout


def _inventory(conn: Connection) -> tuple[str, dict[str, int], list[BlobCopy]]:
    """Schema revision, row counts and referenced blobs of the index *conn* reads."""
    revision = MigrationContext.configure(conn).get_current_revision()
    if revision is None:
        raise BackupError("the index has no schema: nothing to back up")
    counts = {
        name: int(conn.execute(select(func.count()).select_from(table)).scalar_one())
        for name, table in COUNTED.items()
    }
    blobs = {
        row.blob_key: BlobCopy(row.blob_key, row.size, row.sha256) for row in indexed_blobs(conn)
    }
    for v in version_blobs(conn):
        blobs.setdefault(v.blob_key, BlobCopy(v.blob_key, v.size, v.sha256))
    return revision, counts, sorted(blobs.values(), key=lambda b: b.key)


# --- blobs ----------------------------------------------------------------------------------


def _copy_blob(blobs: BlobStore, blob: BlobCopy, copies: FilesystemStore) -> None:
    try:
        data = blobs.get(blob.key)
    except StorageUnavailable as exc:
        raise BackupError(
            f"blob {blob.key} of the snapshot cannot be read ({exc}): deleted since the "
            "snapshot? take the backup again"
        ) from exc
    if hashlib.sha256(data).hexdigest() != blob.sha256:
        raise BackupError(f"blob {blob.key} does not match its SHA-256 in the index (pacs fsck)")
    try:
        copies.put(blob.key, data)  # durable: fsync'd file and directories, atomic rename
    except StorageUnavailable as exc:
        raise BackupError(f"the backup cannot be written: {exc}") from exc


def _blob_list(path: Path) -> Iterator[BlobCopy]:
    for line in path.read_text().splitlines():
        sha256, _, key = line.partition("  ")
        if not is_blob_key(key):  # it becomes a path and a store key
            raise BackupError(f"{path}: {key!r} is not a blob key")
        yield BlobCopy(key, -1, sha256)  # the size is the index's to know


def _read_checked(path: Path, blob: BlobCopy) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BackupError(f"the backup lacks blob {blob.key}: {exc}") from exc
    if hashlib.sha256(data).hexdigest() != blob.sha256:
        raise BackupError(f"blob {blob.key} of the backup does not match its SHA-256")
    return data


# --- helpers --------------------------------------------------------------------------------


def _check_empty(db: Database, blobs: BlobStore | None) -> None:
    try:
        tables = inspect(db.engine).get_table_names()
    except SQLAlchemyError as exc:
        raise BackupError(f"the target index cannot be read: {exc}") from exc
    finally:
        db.engine.dispose()
    stored = None if blobs is None else next(iter(blobs.list()), None)
    if tables or stored is not None:
        what = "an index" if tables else f"blobs ({stored.key if stored else ''})"
        raise BackupError(
            f"the target already holds {what}: restore into an empty PACS_HOME / database / "
            "bucket, or pass --force to overwrite"
        )


@contextlib.contextmanager
def _reading(db: Database) -> Iterator[Connection]:
    """A connection to the restored index *db* (its pool disposed of after)."""
    try:
        with db.engine.connect() as conn:
            yield conn
    except SQLAlchemyError as exc:
        raise BackupError(f"the restored index cannot be read: {exc}") from exc
    finally:
        db.engine.dispose()


def _write_private(path: Path, content: str) -> str:
    """Write *content* to *path* (0600, fsync'd, atomically); its SHA-256."""
    data = content.encode()
    with tempfile.NamedTemporaryFile(dir=path.parent, delete=False) as tmp:
        tmp.write(data)
        tmp.flush()
        os.fsync(tmp.fileno())
    Path(tmp.name).replace(path)  # 0600: NamedTemporaryFile's mode
    return hashlib.sha256(data).hexdigest()


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _pacs_version() -> str:
    try:
        return version("pacs-ai")
    except PackageNotFoundError:
        return "unknown"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
