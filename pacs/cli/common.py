"""What every ``pacs`` command opens: its settings, logging, and the archive or the index.

One place, so that invalid settings end every command the same way (exit status 2, no
traceback), every process logs in one format, and every Database a command opens is
disposed of when the command is done.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
from rich.console import Console

from pacs.errors import IndexUnavailable, StorageUnavailable
from pacs.logs import configure_logging

if TYPE_CHECKING:  # imported where used: `pacs send` and `pacs echo` read no settings
    from pacs.index import Database
    from pacs.ingest import Archive
    from pacs.settings import PacsSettings

__all__ = [
    "AsJson",
    "configure_logging",
    "console",
    "load_settings",
    "open_archive",
    "opened_archive",
    "opened_index",
    "when_available",
]

console = Console(stderr=True)
log = logging.getLogger(__name__)
T = TypeVar("T")

AsJson = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def load_settings() -> PacsSettings:
    """This process's PACS_* settings.

    Raises
    ------
    typer.Exit
        With status 2, after saying why, when a setting is invalid.
    """
    from pacs.settings import PacsSettings

    try:
        return PacsSettings()
    except ValueError as exc:
        console.print(f"[red]invalid settings:[/red] {exc}")
        raise typer.Exit(2) from exc


def open_archive(settings: PacsSettings, migrate: bool = False) -> Archive:
    """Database + blob store + archive, with the schema checked (or first migrated).

    The caller owns ``archive.db``: for something that lives as long as the process (the
    HTTP app, the inference runtime). A command uses :func:`opened_archive`.

    Raises
    ------
    SchemaOutdated
        When the index is not at the newest revision (and *migrate* is false).
    IndexUnavailable
        When the schema revision cannot be read.
    """
    from pacs.index import Database, check_at_head, upgrade
    from pacs.ingest import Archive
    from pacs.storage import open_store

    db = Database(settings.resolved_database_url, settings.db_pool_size, settings.db_max_overflow)
    try:
        if migrate:
            upgrade(db)
        check_at_head(db)
        blobs = open_store(
            settings.resolved_storage_url, settings.s3_access_key, settings.s3_secret_key
        )
    except BaseException:
        db.dispose()  # a caller that retries does not pile up pools
        raise
    return Archive(
        db,
        blobs,
        default_facility=settings.facility,
        version_retention=timedelta(days=settings.version_retention_days),
        store_audit_window=settings.audit_store_window,
    )


def when_available(call: Callable[[], T], what: str, max_delay: float = 5.0) -> T:
    """*call*, again while the index or the store cannot be reached (a database restarting,
    an S3 endpoint away): a long-running process such as ``pacs worker`` started by its
    supervisor at that moment waits for them instead of exiting. Retries with back-off up
    to *max_delay* seconds, logging each wait; any other error (an outdated schema) ends it.
    """
    delay = 0.5
    while True:
        try:
            return call()
        except (IndexUnavailable, StorageUnavailable) as exc:
            log.warning("%s: waiting %.1f s for the index and storage: %s", what, delay, exc)
            time.sleep(delay)
            delay = min(delay * 2, max_delay)


@contextlib.contextmanager
def opened_archive(
    settings: PacsSettings | None = None, migrate: bool = False
) -> Iterator[Archive]:
    """The archive of *settings* (default: this process's), its index disposed of at the end."""
    archive = open_archive(load_settings() if settings is None else settings, migrate)
    try:
        yield archive
    finally:
        try:
            archive.close()
        finally:
            archive.db.dispose()


@contextlib.contextmanager
def opened_index(settings: PacsSettings | None = None) -> Iterator[Database]:
    """The index alone (no blob store, no schema check), disposed of at the end: for a
    command, or one thread of a process (the sweeper, the webhook dispatcher), so its pool
    is small (2 connections, 2 more under load)."""
    from pacs.index import Database

    db = Database((load_settings() if settings is None else settings).resolved_database_url, 2, 2)
    try:
        yield db
    finally:
        db.dispose()
