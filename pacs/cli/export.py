"""``pacs export``: studies out of the archive, de-identified, as Part 10 files in folders.

The studies are the STUDY arguments and/or those one study-level search (``--query``, the
keys QIDO-RS and C-FIND take) finds, in every facility or the one ``--facility`` names; the
work per study is :mod:`pacs.deid.export`'s, shared with ``POST /api/v1/exports``. Each study
is written under a temporary folder inside the output folder and renamed to
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
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from pacs.cli.common import AsJson, console, opened_archive
from pacs.deid import Deidentifier, InvalidProjectKey, Options
from pacs.deid.export import (
    ExportReport,
    Requester,
    deidentified,
    record_export,
    select_studies,
    study_instances,
)
from pacs.errors import QueryError
from pacs.facilities import Scope, facility_names
from pacs.ingest import Archive

__all__ = ["ExportReport", "export_command", "export_study", "operator"]


def export_command(
    out: Annotated[Path, typer.Option("--out", help="Folder to write the studies into.")],
    project_key_file: Annotated[
        Path,
        typer.Option(
            envvar="PACS_EXPORT_KEY_FILE",
            help="The project's secret key (its bytes, at least 16): same key, same pseudonyms.",
        ),
    ],
    studies: Annotated[
        list[str] | None, typer.Argument(help="StudyInstanceUID(s) to export.")
    ] = None,
    query: Annotated[
        list[str] | None,
        typer.Option(
            "--query",
            help="KEYWORD=VALUE matching key of a study-level search (QIDO/C-FIND rules: "
            "PatientID=P*, StudyDate=20240101-20241231, ModalitiesInStudy=CT); repeatable; "
            "the studies it finds are exported with the STUDY arguments.",
        ),
    ] = None,
    facility: Annotated[
        str | None, typer.Option(help="Only studies this facility sees (default: every one).")
    ] = None,
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
    """Export studies (STUDY arguments and/or --query) de-identified as
    OUT/<study>/<series>/<instance>.dcm; exit 1 if a study was not exported, an instance was
    refused or nothing matched."""
    if not deidentify:
        _say("[red]error:[/red] only de-identified export is supported: pass --deidentify")
        raise typer.Exit(2)
    if not studies and not query:
        _say("[red]error:[/red] name the studies: STUDY arguments and/or --query KEY=VALUE")
        raise typer.Exit(2)
    matching = _matching(query or [])
    deidentifier = _deidentifier(
        project_key_file,
        Options(modified_dates=modified_dates, clean_descriptors=clean_descriptors),
    )
    report = ExportReport()
    with opened_archive() as archive:
        scope = _scope(archive, facility)
        try:
            chosen = select_studies(archive, studies or [], matching, scope)
        except QueryError as exc:
            _say(f"[red]error:[/red] --query: {escape(str(exc))}")
            raise typer.Exit(2) from exc
        if chosen:
            try:
                out.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                _say(f"[red]error:[/red] cannot make the output folder {escape(f'{out}: {exc}')}")
                raise typer.Exit(2) from exc
        for uid in chosen:
            export_study(
                archive, uid, out, deidentifier, report, force=force_burned_in, scope=scope
            )
    for uid, reason in report.skipped.items():
        _say(f"[red]not exported[/red] {escape(uid)}: {escape(reason)}")
    for sop_instance_uid, reason in report.refused.items():
        _say(f"[yellow]refused[/yellow] {sop_instance_uid}: {escape(reason)}")
    if as_json:
        typer.echo(json.dumps(report.summary()))
    elif not chosen:
        typer.echo("no study matched: nothing exported")
    else:
        typer.echo(
            f"exported {len(report.studies)} studies, {report.instances} instances to {out}; "
            f"refused {len(report.refused)}, studies not exported {len(report.skipped)}"
        )
    if report.refused or report.skipped or not chosen:
        raise typer.Exit(1)


def export_study(
    archive: Archive,
    StudyInstanceUID: str,
    out: Path,
    deidentifier: Deidentifier,
    report: ExportReport,
    *,
    force: bool = False,
    scope: Scope | None = None,
) -> None:
    """Write one study de-identified as ``out/<new study>/<new series>/<new instance>.dcm``.

    Each study is written under a temporary folder inside *out* and renamed once every
    instance is written. A study that is unknown (in *scope*, default every facility), or
    already exported into *out* under this key, is recorded in ``report.skipped``; an
    instance the de-identifier refuses, in ``report.refused``.

    Raises
    ------
    StorageUnavailable
        A blob cannot be read; nothing of this study is left in *out*.
    AuditUnavailable
        The ``export`` audit event could not be written; nothing of this study was written.
    """
    found = study_instances(archive, StudyInstanceUID, scope or Scope.everything(), report)
    if not found:
        return
    new_uid = deidentifier.uids.replace(StudyInstanceUID)
    target = out / new_uid
    if target.exists():  # never mix two exports of a study: the user removes the old one
        report.skipped[StudyInstanceUID] = f"already exported as {target}"
        return
    # Audited before any of it is written out; no audit event, no export (AuditUnavailable).
    record_export(archive, StudyInstanceUID, len(found), str(out.resolve()), Requester(operator()))
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=out))
    written = 0
    try:
        for ds in deidentified(archive, found, deidentifier, report, force=force):
            path = staging / str(ds.SeriesInstanceUID) / f"{ds.SOPInstanceUID}.dcm"
            path.parent.mkdir(exist_ok=True)
            ds.save_as(path, enforce_file_format=True)
            written += 1
        if written:  # a study whose every instance was refused leaves no empty folder
            staging.rename(target)
            report.studies.append(new_uid)
            report.instances += written
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already once renamed


def parse_matching(pairs: list[str]) -> dict[str, str]:
    """``KEYWORD=VALUE`` pairs as a search's matching keys (ValueError: one without ``=``)."""
    matching: dict[str, str] = {}
    for pair in pairs:
        keyword, sep, value = pair.partition("=")
        if not sep or not keyword.strip():
            raise ValueError(f"{pair!r} is not KEYWORD=VALUE")
        matching[keyword.strip()] = value
    return matching


def _matching(pairs: list[str]) -> dict[str, str]:
    try:
        return parse_matching(pairs)
    except ValueError as exc:
        _say(f"[red]error:[/red] --query: {escape(str(exc))}")
        raise typer.Exit(2) from exc


def _scope(archive: Archive, facility: str | None) -> Scope:
    """Every facility, or the one --facility names (exit 2 when there is no such facility)."""
    if facility is None:
        return Scope.everything()
    with archive.db.read() as conn:
        known = facility_names(conn)
    if facility not in known:
        _say(f"[red]error:[/red] no facility {escape(facility)!r}: one of {sorted(known)}")
        raise typer.Exit(2)
    return Scope.of({facility})


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
