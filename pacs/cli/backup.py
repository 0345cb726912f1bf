"""``pacs backup`` and ``pacs restore``: the index and the blob store, with a checked restore."""

from __future__ import annotations

import dataclasses
import json
from datetime import timedelta
from pathlib import Path
from typing import Annotated

import typer

from pacs.backup import backup, restore
from pacs.cli.common import AsJson, console, load_settings, open_archive, opened_archive
from pacs.fsck import fsck as run_fsck
from pacs.index import Database
from pacs.storage import open_store


def backup_command(
    dest: Annotated[Path, typer.Argument(help="A new (or empty) folder for the backup.")],
    index_only: Annotated[
        bool,
        typer.Option(
            "--index-only",
            help="Leave the blobs out (an S3 bucket backed up by its own versioning or "
            "replication); the backup still lists every blob key and SHA-256.",
        ),
    ] = False,
    as_json: AsJson = False,
) -> None:
    """Back up the index, then the blobs it references, while the archive keeps running."""
    with opened_archive() as archive:
        manifest = backup(archive.db, archive.blobs, dest, include_blobs=not index_only)
    if as_json:
        typer.echo(json.dumps(dataclasses.asdict(manifest)))
        return
    typer.echo(
        f"{dest}: index at {manifest.schema_revision} ({manifest.index_tool}), "
        f"{manifest.counts['instances']} instances, {manifest.blobs} blobs "
        f"({manifest.blob_bytes} bytes{'' if manifest.blobs_included else ', not copied'})"
    )


def restore_command(
    src: Annotated[Path, typer.Argument(help="A folder written by `pacs backup`.")],
    force: Annotated[
        bool,
        typer.Option(help="Overwrite a target that already holds an index or blobs."),
    ] = False,
    as_json: AsJson = False,
) -> None:
    """Restore a backup into this PACS_HOME / database / store (the archive stopped), migrate
    it to this version's schema, and check it with fsck; exit 0 only when consistent."""
    settings = load_settings()
    db = Database(settings.resolved_database_url, 2, 2)
    try:
        blobs = open_store(
            settings.resolved_storage_url, settings.s3_access_key, settings.s3_secret_key
        )
        manifest = restore(src, db, blobs, force)
    finally:
        db.dispose()
    archive = open_archive(settings, migrate=True)
    try:
        report = run_fsck(archive, verify_checksums=True, grace=timedelta(0))
    finally:
        archive.db.dispose()
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "manifest": dataclasses.asdict(manifest),
                    "fsck": dataclasses.asdict(report) | {"consistent": report.consistent},
                }
            )
        )
    else:
        typer.echo(
            f"restored {manifest.counts['instances']} instances and {manifest.blobs} blobs "
            f"of {manifest.started_at} (schema {manifest.schema_revision}); fsck: "
            f"{report.indexed} indexed, {report.blobs} stored objects, "
            + ("consistent" if report.consistent else "INCONSISTENT (see pacs fsck)")
        )
    if not report.consistent:
        console.print("[red]the restored archive is not consistent: run `pacs fsck`[/red]")
        raise typer.Exit(1)
