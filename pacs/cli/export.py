"""``pacs export``: studies out of the archive, de-identified, as Part 10 files in folders.

Each study is written under a temporary folder inside the output folder and renamed to
``<new StudyInstanceUID>`` once every instance is written, so an export that fails half-way
(storage unreadable, disk full, interrupted) leaves no partial study that could pass for a
whole one. Instances the de-identifier refuses (burned-in text, unparsable) are reported on
stderr and the rest of the study is written; the exit status says something was refused.

Without ``--deidentify`` the command refuses: exporting identified data to a folder is what
``pacs send`` or WADO-RS to an authorised peer is for, not a file export that leaves the archive.
"""

from __future__ import annotations

import getpass
import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from pacs.audit import AuditAction, AuditEvent, record_event
from pacs.cli.common import AsJson, console, opened_archive
from pacs.deid import DeidentificationError, Deidentifier, InvalidProjectKey, Options, read_instance
from pacs.facilities import Scope
from pacs.ingest import Archive
from pacs.search import Level, Query, matching_instances
from pacs.uids import is_valid_uid

__all__ = ["ExportReport", "export_command", "export_study", "operator"]


@dataclass
class ExportReport:
    """What an export did: folders written, instances written, instances refused and why."""

    studies: list[Path] = field(default_factory=list)
    instances: int = 0
    refused: dict[str, str] = field(default_factory=dict)  # SOPInstanceUID -> reason
    skipped: dict[str, str] = field(default_factory=dict)  # StudyInstanceUID -> why not exported


def export_command(
    studies: Annotated[list[str], typer.Argument(help="StudyInstanceUID(s) to export.")],
    out: Annotated[Path, typer.Option("--out", help="Folder to write the studies into.")],
    project_key_file: Annotated[
        Path,
        typer.Option(
            envvar="PACS_EXPORT_KEY_FILE",
            help="The project's secret key (its bytes, at least 16): same key, same pseudonyms.",
        ),
    ],
    deidentify: Annotated[
        bool, typer.Option(help="De-identify (PS3.15 Annex E Basic Profile); required.")
    ] = False,
    modified_dates: Annotated[
        bool, typer.Option(help="Shift dates by a per-patient offset instead of removing them.")
    ] = False,
    clean_descriptors: Annotated[
        bool, typer.Option(help="Keep descriptions, cleaned of identifying text.")
    ] = False,
    force_burned_in: Annotated[
        bool, typer.Option(help="Export images whose pixels may show burned-in text too.")
    ] = False,
    as_json: AsJson = False,
) -> None:
    """Export studies de-identified as OUT/<study>/<series>/<instance>.dcm; exit 1 if a study
    was not exported or an instance was refused."""
    if not deidentify:
        _say("[red]error:[/red] only de-identified export is supported: pass --deidentify")
        raise typer.Exit(2)
    deidentifier = _deidentifier(
        project_key_file,
        Options(modified_dates=modified_dates, clean_descriptors=clean_descriptors),
    )
    report = ExportReport()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        _say(f"[red]error:[/red] cannot make the output folder {escape(f'{out}: {exc}')}")
        raise typer.Exit(2) from exc
    with opened_archive() as archive:
        for uid in studies:
            export_study(archive, uid, out, deidentifier, report, force=force_burned_in)
    for uid, reason in report.skipped.items():
        _say(f"[red]not exported[/red] {escape(uid)}: {escape(reason)}")
    for sop_instance_uid, reason in report.refused.items():
        _say(f"[yellow]refused[/yellow] {sop_instance_uid}: {escape(reason)}")
    if as_json:
        summary = {
            "studies": len(report.studies),
            "instances": report.instances,
            "refused": len(report.refused),
            "skipped": len(report.skipped),
        }
        typer.echo(json.dumps(summary))
    else:
        typer.echo(
            f"exported {len(report.studies)} studies, {report.instances} instances to {out}; "
            f"refused {len(report.refused)}, studies not exported {len(report.skipped)}"
        )
    if report.refused or report.skipped:
        raise typer.Exit(1)


def export_study(
    archive: Archive,
    StudyInstanceUID: str,
    out: Path,
    deidentifier: Deidentifier,
    report: ExportReport,
    *,
    force: bool = False,
) -> None:
    """Write one study de-identified as ``out/<new study>/<new series>/<new instance>.dcm``.

    A study that is unknown, or already exported into *out* under this key, is recorded in
    ``report.skipped``; an instance the de-identifier refuses, in ``report.refused``.

    Raises
    ------
    StorageUnavailable
        A blob cannot be read; nothing of this study is left in *out*.
    AuditUnavailable
        The ``export`` audit event could not be written; nothing of this study was written.
    """
    # A wild card or a list would match other studies (PS3.4 C.2.2.2): a single valid UID only.
    if not is_valid_uid(StudyInstanceUID):
        report.skipped[StudyInstanceUID] = "not a valid UID"
        return
    with archive.db.read() as conn:
        found = matching_instances(
            conn,
            Query(
                Level.STUDY,
                {"StudyInstanceUID": StudyInstanceUID},
                (),
                scope=Scope.everything(),
            ),
        )
    if not found:
        report.skipped[StudyInstanceUID] = "no such study in this archive"
        return
    target = out / deidentifier.uids.replace(StudyInstanceUID)
    if target.exists():  # never mix two exports of a study: the user removes the old one
        report.skipped[StudyInstanceUID] = f"already exported as {target}"
        return
    # Audited before any of it is written out; no audit event, no export (AuditUnavailable).
    record_event(
        archive.db,
        AuditEvent(
            AuditAction.EXPORT,
            subject=operator(),
            StudyInstanceUID=StudyInstanceUID,
            detail={"instances": len(found), "to": str(out.resolve()), "deidentified": True},
        ),
    )
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=out))
    written = 0
    try:
        for stored in found:  # one instance in memory at a time
            try:
                ds = deidentifier.dataset(
                    read_instance(archive.blobs.get(stored.blob_key)), force=force
                )
            except DeidentificationError as exc:
                report.refused[stored.SOPInstanceUID] = str(exc)
                continue
            path = staging / str(ds.SeriesInstanceUID) / f"{ds.SOPInstanceUID}.dcm"
            path.parent.mkdir(exist_ok=True)
            ds.save_as(path, enforce_file_format=True)
            written += 1
        if written:  # a study whose every instance was refused leaves no empty folder
            staging.rename(target)
            report.studies.append(target)
            report.instances += written
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already once renamed


def operator() -> str:
    """Who runs the command: the operating-system account (the CLI has no token)."""
    try:
        return f"os:{getpass.getuser()}"
    except (KeyError, OSError):  # no passwd entry, no LOGNAME: still an event, not a crash
        return "os:unknown"


def _deidentifier(key_file: Path, options: Options) -> Deidentifier:
    """The project's de-identifier; exit status 2 when its key file is missing or too short."""
    try:
        key = key_file.read_bytes()
    except OSError as exc:
        _say(f"[red]error:[/red] cannot read the project key file {escape(f'{key_file}: {exc}')}")
        raise typer.Exit(2) from exc
    try:
        return Deidentifier(key, options)
    except InvalidProjectKey as exc:
        _say(f"[red]error:[/red] project key file {escape(f'{key_file}: {exc}')}")
        raise typer.Exit(2) from exc


def _say(message: str) -> None:
    """One line on stderr, never wrapped (UIDs and paths stay whole for whoever greps it)."""
    console.print(message, soft_wrap=True)
