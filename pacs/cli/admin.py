"""The administrator's commands: ``pacs db``, ``ae``, ``token``, ``jobs``, ``stats``, ``fsck``,
``versions``."""

from __future__ import annotations

import dataclasses
import enum
import json
from datetime import timedelta
from typing import Annotated

import typer

from pacs.cli.common import AsJson, console, load_settings, opened_archive, opened_index
from pacs.errors import InvalidAE
from pacs.facilities import facility_names
from pacs.fsck import fsck as run_fsck
from pacs.index import check_at_head, counts, upgrade
from pacs.index.ae_registry import (
    DEFAULT_PERMISSIONS,
    RegisteredAE,
    add_ae,
    find_ae,
    format_permissions,
    list_aes,
    parse_permissions,
    remove_ae,
)
from pacs.jobs import JobStatus, get_job, list_jobs, retry
from pacs.uids import is_valid_uid
from pacs.versions import purge_expired, versions_of

db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
ae_app = typer.Typer(
    help="Registry of DICOM peers (permissions, C-MOVE destinations, facilities).",
    no_args_is_help=True,
)
token_app = typer.Typer(help="API bearer tokens.", no_args_is_help=True)
jobs_app = typer.Typer(help="The job queue.", no_args_is_help=True)

# Ids are SQL BIGINTs: a larger number is a usage error, not an overflow in the driver.
JobId = Annotated[int, typer.Argument(min=1, max=2**63 - 1, help="Job id.")]


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the index schema to the newest revision."""
    with opened_index() as db:
        upgrade(db)
        check_at_head(db)
    typer.echo("index schema is up to date")


class TokenRole(enum.StrEnum):
    """The API's roles (viewer_api.auth.Role), named here so the CLI loads without the API."""

    MODALITY = "modality"
    RADIOLOGIST = "radiologist"
    EMR = "emr"
    ADMIN = "admin"


@token_app.command("create")
def token_create(
    role: Annotated[list[TokenRole], typer.Option(help="Role(s) the token carries.")],
    subject: Annotated[str, typer.Option(help="Who the token is for.")] = "pacs-cli",
    ttl: Annotated[
        int, typer.Option(min=60, help="Lifetime in seconds, at most PACS_TOKEN_MAX_TTL.")
    ] = 3600,
    facility: Annotated[
        list[str] | None,
        typer.Option(
            help="A facility the token speaks for (repeat for several); "
            "none: the archive's default facility (PACS_FACILITY)."
        ),
    ] = None,
    all_facilities: Annotated[
        bool, typer.Option("--all-facilities", help="Every facility (a global admin).")
    ] = False,
) -> None:
    """Print a bearer token signed with the embedded secret (not for OIDC set-ups)."""
    from pacs.errors import InvalidFacility
    from pacs.facilities import EVERY_FACILITY, check_name
    from viewer_api.auth import Role, create_token, load_or_create_secret
    from viewer_api.settings import ApiSettings

    settings = load_settings()
    try:
        api = ApiSettings()
    except ValueError as exc:
        console.print(f"[red]invalid settings:[/red] {exc}")
        raise typer.Exit(2) from exc
    if ttl > api.token_max_ttl:
        console.print(
            f"[red]--ttl {ttl} exceeds PACS_TOKEN_MAX_TTL ({api.token_max_ttl} s):[/red] "
            "the API would refuse the token; ask for less or raise PACS_TOKEN_MAX_TTL"
        )
        raise typer.Exit(2)
    if all_facilities and (facility or TokenRole.ADMIN not in role):
        console.print("[red]--all-facilities is for an admin token without --facility[/red]")
        raise typer.Exit(2)
    try:
        names = [check_name(name) for name in facility or []]
    except InvalidFacility as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    secret = load_or_create_secret(settings.home, settings.jwt_secret_file)
    roles = [Role(r.value) for r in role]
    facilities = [EVERY_FACILITY] if all_facilities else names
    typer.echo(create_token(secret, subject, roles, ttl, facilities))


@ae_app.command("add")
def ae_add(
    ae_title: Annotated[str, typer.Argument(help="The peer's AE title.")],
    host: Annotated[str, typer.Argument(help="Its host name or address.")],
    port: Annotated[int, typer.Argument(min=1, max=65535, help="Its DICOM port.")],
    permit: Annotated[
        str | None,
        typer.Option(
            help="What it may do: store, find, retrieve (C-MOVE/C-GET), destination "
            "(receive C-MOVE results), replace (store new bytes for a stored instance, "
            "correct a stored patient's name, birth date, sex or a study's accession "
            "number), comma-separated, or all. Default: all but replace for a new entry, "
            "unchanged for a known one.",
        ),
    ] = None,
    expected_host: Annotated[
        str | None,
        typer.Option(
            "--from",
            help="The host it must call from (name or address); associations from any "
            "other are rejected. 'any' for any host (the default of a new entry); "
            "unchanged for a known one.",
        ),
    ] = None,
    tls: Annotated[
        bool | None,
        typer.Option(
            "--tls/--no-tls",
            help="Send it C-MOVE results over TLS: its certificate must be issued by "
            "PACS_DICOM_TLS_CA for HOST; ours (PACS_DICOM_TLS_CERT) is the client's. "
            "Default: off for a new entry, unchanged for a known one.",
        ),
    ] = None,
    facility: Annotated[
        list[str] | None,
        typer.Option(
            help="A registered facility it speaks for (repeat for several): its C-FIND, "
            "C-MOVE and C-GET see those facilities' studies, and it may call only their AE "
            "titles or ours. Default: none for a new entry (it speaks for the facility of the "
            "AE title it calls), unchanged for a known one.",
        ),
    ] = None,
    no_facility: Annotated[
        bool,
        typer.Option(
            "--no-facility",
            help="Forget its facilities: it speaks for the facility of the AE title it calls.",
        ),
    ] = False,
) -> None:
    """Register a peer, or change a known AE title's host and port and whatever of
    --permit, --from, --tls and --facility is given (the rest stays as it was)."""
    if facility and no_facility:
        console.print("[red]--facility and --no-facility exclude each other[/red]")
        raise typer.Exit(2)
    with opened_archive() as archive, archive.db.write() as conn:
        known = find_ae(conn, ae_title)
        if facility:
            unknown = sorted(set(facility) - facility_names(conn))
            if unknown:
                raise InvalidAE(
                    f"unknown facility {', '.join(unknown)}: register it with "
                    "`pacs facility add` first"
                )
        entry = RegisteredAE(
            ae_title,
            host,
            port,
            parse_permissions(permit)
            if permit is not None
            else (known.permissions if known else DEFAULT_PERMISSIONS),
            (None if expected_host == "any" else expected_host)
            if expected_host is not None
            else (known.expected_host if known else None),
            tls if tls is not None else (known.tls if known else False),
            frozenset(facility)
            if facility
            else (known.facilities if known and not no_facility else frozenset()),
        )
        add_ae(conn, entry)
    allowed = format_permissions(entry.permissions) or "nothing"
    origin = f" from {entry.expected_host}" if entry.expected_host else ""
    tls_note = " (TLS)" if entry.tls else ""
    typer.echo(f"{ae_title} -> {host}:{port}{tls_note} ({allowed}){origin}{_facilities(entry)}")


def _facilities(ae: RegisteredAE) -> str:
    return f" for {','.join(sorted(ae.facilities))}" if ae.facilities else ""


@ae_app.command("remove")
def ae_remove(ae_title: Annotated[str, typer.Argument(help="The peer's AE title.")]) -> None:
    """Forget a peer."""
    with opened_archive() as archive, archive.db.write() as conn:
        if not remove_ae(conn, ae_title):
            console.print(f"[red]{ae_title} is not registered[/red]")
            raise typer.Exit(1)


@ae_app.command("list")
def ae_list(as_json: AsJson = False) -> None:
    """Registered peers."""
    with opened_archive() as archive, archive.db.read() as conn:
        aes = list_aes(conn)
    if as_json:
        rows = [
            dataclasses.asdict(ae)
            | {"permissions": sorted(ae.permissions), "facilities": sorted(ae.facilities)}
            for ae in aes
        ]
        typer.echo(json.dumps(rows))
    for ae in [] if as_json else aes:
        allowed = format_permissions(ae.permissions) or "nothing"
        origin = f" from {ae.expected_host}" if ae.expected_host else ""
        tls = " tls" if ae.tls else ""
        typer.echo(f"{ae.ae_title:<16} {ae.host}:{ae.port}{tls} {allowed}{origin}{_facilities(ae)}")


@jobs_app.command("list")
def jobs_list(
    status: Annotated[JobStatus | None, typer.Option(help="Only jobs in this state.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 50,
    as_json: AsJson = False,
) -> None:
    """Recent jobs, newest first."""
    with opened_archive() as archive, archive.db.read() as conn:
        found = list_jobs(conn, status, limit)
    if as_json:
        typer.echo(json.dumps([dataclasses.asdict(j) for j in found], default=str))
        return
    for j in found:
        lease = "-"
        if j.status == JobStatus.RUNNING and j.lease_expires_at is not None:
            lease = f"{j.lease_owner} until {j.lease_expires_at.isoformat(timespec='seconds')}"
        typer.echo(
            f"{j.id:>6} {j.kind:<16} {j.status:<10} {j.attempts}/{j.max_attempts} "
            f"{j.StudyInstanceUID or '-'} lease {lease} {j.last_error or ''}".rstrip()
        )


@jobs_app.command("show")
def jobs_show(job_id: JobId) -> None:
    """One job, as JSON: its state, lease owner and expiry, and the model it ran with."""
    with opened_archive() as archive, archive.db.read() as conn:
        found = get_job(conn, job_id)
    if found is None:
        console.print(f"[red]no job {job_id}[/red]")
        raise typer.Exit(1)
    typer.echo(json.dumps(dataclasses.asdict(found), indent=2, default=str))


@jobs_app.command("retry")
def jobs_retry(job_id: JobId) -> None:
    """Queue a failed job again with fresh attempts."""
    with opened_archive() as archive:
        retried = retry(archive.db, job_id)
    if not retried:
        console.print(f"[red]job {job_id} is not failed[/red]")
        raise typer.Exit(1)
    typer.echo(f"job {job_id} queued")


def stats(as_json: AsJson = False) -> None:
    """Counts of patients, studies, series and instances."""
    with opened_archive() as archive, archive.db.read() as conn:
        found = counts(conn)
    if as_json:
        typer.echo(json.dumps(dataclasses.asdict(found)))
    else:
        for name, value in dataclasses.asdict(found).items():
            typer.echo(f"{name:>10}: {value}")


def fsck(
    repair: Annotated[bool, typer.Option(help="Fix what can be fixed.")] = False,
    as_json: AsJson = False,
    verify: Annotated[bool, typer.Option(help="Re-hash every blob (slow on big archives).")] = True,
    grace: Annotated[
        float, typer.Option(help="Seconds before an unindexed blob is an orphan.")
    ] = 300,
) -> None:
    """Check index against storage; exit 0 only when consistent."""
    with opened_archive() as archive:
        report = run_fsck(archive, repair, verify, timedelta(seconds=grace))
    if as_json:
        typer.echo(json.dumps(dataclasses.asdict(report) | {"consistent": report.consistent}))
    else:
        typer.echo(
            f"{report.indexed} indexed instances, {report.versions} kept versions, "
            f"{report.blobs} stored objects"
        )
        for name in ("missing", "mismatched", "orphans", "strays", "in_flight"):
            for key in getattr(report, name):
                action = report.repaired.get(key, "")
                typer.echo(f"{name:>10}: {key}" + (f" -> {action}" if action else ""))
        typer.echo("consistent" if report.consistent else "INCONSISTENT")
    if not report.consistent:
        raise typer.Exit(1)


def versions(
    sop_instance_uid: Annotated[
        str | None, typer.Argument(help="The instance's SOP Instance UID.")
    ] = None,
    purge_expired_versions: Annotated[
        bool,
        typer.Option(
            "--purge-expired",
            help="Delete the kept versions whose retention (PACS_VERSION_RETENTION_DAYS) ended.",
        ),
    ] = False,
    as_json: AsJson = False,
) -> None:
    """An instance's current and superseded versions; or delete the expired ones."""
    if purge_expired_versions == (sop_instance_uid is not None):
        console.print("[red]give a SOP Instance UID or --purge-expired[/red]")
        raise typer.Exit(2)
    if purge_expired_versions:
        with opened_archive() as archive:
            purged = purge_expired(archive)
        typer.echo(json.dumps({"purged": purged}) if as_json else f"{purged} version(s) purged")
        return
    assert sop_instance_uid is not None
    if not is_valid_uid(sop_instance_uid):
        console.print(f"[red]{sop_instance_uid!r} is not a valid UID[/red]")
        raise typer.Exit(2)
    with opened_archive() as archive, archive.db.read() as conn:
        found = versions_of(conn, sop_instance_uid)
    if not found:
        console.print(f"[red]no version of {sop_instance_uid} is stored[/red]")
        raise typer.Exit(1)
    if as_json:
        rows = [dataclasses.asdict(v) | {"current": v.current} for v in found]
        typer.echo(json.dumps(rows, default=str))
        return
    for v in found:
        when = v.received_at.isoformat(timespec="seconds")
        state = (
            "current"
            if v.superseded_at is None
            else f"superseded {v.superseded_at.isoformat(timespec='seconds')} by "
            f"{v.superseded_by}, kept until {v.keep_until:%Y-%m-%d}"
        )
        typer.echo(f"{v.sha256[:16]} {v.size:>10} {when} {v.stored_by}  {state}")
