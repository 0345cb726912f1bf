"""The ``pacs`` command line: the composition root that assembles a process from settings."""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import json
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Annotated, Any

import typer

from inference.settings import InferenceSettings
from pacs.cli.ai import (
    InferenceRuntime,
    findings_command,
    model_app,
    webhook_app,
    worker_command,
)
from pacs.cli.common import (
    AsJson,
    configure_logging,
    console,
    load_settings,
    open_archive,
    opened_archive,
    opened_index,
)
from pacs.cli.scu import echo_command, send_command
from pacs.dimse.server import make_server
from pacs.errors import ArchiveError
from pacs.fsck import fsck as run_fsck
from pacs.index import check_at_head, counts, upgrade
from pacs.index.ae_registry import RegisteredAE, add_ae, list_aes, remove_ae
from pacs.jobs import JobStatus, get_job, list_jobs, retry
from pacs.results import NODULE_DETECTION
from pacs.settings import PacsSettings
from pacs.stability import Sweeper
from pacs.webhooks import Dispatcher

app = typer.Typer(help="Medical imaging archive with AI-assisted diagnosis.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")
ae_app = typer.Typer(help="Registry of DICOM peers (C-MOVE destinations).", no_args_is_help=True)
app.add_typer(ae_app, name="ae")
token_app = typer.Typer(help="API bearer tokens.", no_args_is_help=True)
app.add_typer(token_app, name="token")
jobs_app = typer.Typer(help="The job queue.", no_args_is_help=True)
app.add_typer(jobs_app, name="jobs")
app.add_typer(model_app, name="model")
app.command("worker")(worker_command)
app.command("findings")(findings_command)
app.add_typer(webhook_app, name="webhook")
app.command("send")(send_command)
app.command("echo")(echo_command)
log = logging.getLogger("pacs")

# Ids are SQL BIGINTs: a larger number is a usage error, not an overflow in the driver.
JobId = Annotated[int, typer.Argument(min=1, max=2**63 - 1, help="Job id.")]


def main() -> None:
    """Entry point of the ``pacs`` command."""
    try:
        app()
    except ArchiveError as exc:
        console.print(f"[red]error:[/red] {exc}")
        sys.exit(2)
    except Exception as exc:
        from models.errors import ModelError

        if not isinstance(exc, ModelError):
            raise
        console.print(f"[red]error:[/red] {exc}")
        sys.exit(2)


def _serve_dimse(settings: PacsSettings, stop: Callable[[], bool]) -> None:
    """Run one receiver until *stop()* returns True."""
    with opened_archive(settings) as archive:
        archive.blobs.check()
        archive.facility_id(settings.facility)
        server = make_server(
            archive,
            settings.host,
            settings.dicom_port,
            settings.ae_title,
            settings.max_associations,
            settings.network_timeout,
            settings.max_query_results,
        )
        thread = threading.Thread(target=server.serve_forever, name="dimse", daemon=True)
        thread.start()
        log.info(
            "DICOM %s listening on %s:%d (pid %d of %d receiver processes), index %s, storage %s",
            settings.ae_title,
            settings.host,
            settings.dicom_port,
            os.getpid(),
            settings.receivers,
            settings.resolved_database_url.split("@")[-1],  # never log a password
            settings.resolved_storage_url.split("?")[0],
        )
        try:
            while not stop():
                time.sleep(0.2)
        finally:
            server.shutdown()


def _receiver_process(settings: PacsSettings, stop: Any) -> None:
    configure_logging()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us through *stop*
    _serve_dimse(settings, stop.is_set)


def _start_http(settings: PacsSettings) -> tuple[Any, threading.Thread]:
    """The DICOMweb API in a thread of this process, on PACS_HOST:PACS_HTTP_PORT.

    The API's modules (FastAPI, numpy, Pillow) are imported here, not at the top: receiver
    processes, which import this module too, never load them.
    """
    import uvicorn

    from viewer_api import ApiSettings, TokenVerifier, create_app, load_or_create_secret

    try:
        api = ApiSettings()
    except ValueError as exc:
        raise ArchiveError(f"invalid settings: {exc}") from exc
    if api.oidc_issuer:
        verifier = TokenVerifier(oidc_issuer=api.oidc_issuer, oidc_audience=api.oidc_audience)
    else:
        verifier = TokenVerifier(secret=load_or_create_secret(settings.home))
    application = create_app(open_archive(settings), verifier, api)
    # proxy_headers off: uvicorn would otherwise replace the peer address with X-Forwarded-For
    # (trusting 127.0.0.1), and PACS_TRUSTED_PROXIES is checked against the real peer.
    config = uvicorn.Config(
        application,
        host=settings.host,
        port=api.http_port,
        log_level="warning",
        access_log=False,
        proxy_headers=False,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="http", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    if not server.started:
        raise ArchiveError(f"the HTTP API could not start on port {api.http_port}")
    log.info("HTTP API listening on %s:%d", settings.host, api.http_port)
    return server, thread


@app.command()
def serve() -> None:
    """Run the archive: DICOM on PACS_DICOM_PORT, DICOMweb on PACS_HTTP_PORT."""
    settings = load_settings()
    configure_logging()
    embedded = settings.resolved_database_url.startswith("sqlite")
    # Embedded defaults just work: a development SQLite index is migrated on start.
    with opened_archive(settings, migrate=embedded and settings.environment == "development"):
        pass
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    # The handler only flips a flag: taking a lock inside a signal handler can deadlock.
    signalled: list[int] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda signum, _frame: signalled.append(signum))
    http, http_thread = _start_http(settings)  # first: if it cannot start, nothing else has
    # The sweeper's and the dispatcher's own indexes, disposed of once both have stopped.
    with contextlib.ExitStack() as indexes:
        sweeper = Sweeper(
            indexes.enter_context(opened_index(settings)),
            timedelta(seconds=settings.stable_age),
            timedelta(seconds=min(5.0, settings.stable_age / 4)),
            job_kinds=(NODULE_DETECTION,),
        )
        sweeper.start()
        webhooks = Dispatcher(
            indexes.enter_context(opened_index(settings)),
            backoff=timedelta(seconds=settings.webhook_backoff),
            max_backoff=timedelta(seconds=settings.webhook_max_backoff),
            settle=timedelta(seconds=settings.change_settle),
        )
        webhooks.start()
        workers = InferenceSettings().workers
        inference = InferenceRuntime(settings, workers) if workers else None
        if inference is not None:
            inference.start()
        children = [
            context.Process(target=_receiver_process, args=(settings, stop), name=f"receiver-{i}")
            for i in range(1, settings.receivers)
        ]
        for child in children:
            child.start()
        try:
            _serve_dimse(settings, lambda: bool(signalled))
        finally:
            stop.set()
            sweeper.stop()
            webhooks.stop()
            if inference is not None:
                inference.stop()
            http.should_exit = True
            http_thread.join(timeout=10)
            for child in children:
                child.join(timeout=10)


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
    ttl: Annotated[int, typer.Option(min=60, help="Lifetime in seconds.")] = 3600,
) -> None:
    """Print a bearer token signed with the embedded secret (not for OIDC set-ups)."""
    from viewer_api.auth import Role, create_token, load_or_create_secret

    secret = load_or_create_secret(load_settings().home)
    typer.echo(create_token(secret, subject, [Role(r.value) for r in role], ttl))


@ae_app.command("add")
def ae_add(
    ae_title: Annotated[str, typer.Argument(help="The peer's AE title.")],
    host: Annotated[str, typer.Argument(help="Its host name or address.")],
    port: Annotated[int, typer.Argument(min=1, max=65535, help="Its DICOM port.")],
) -> None:
    """Register a peer (or change the host and port of a known AE title)."""
    with opened_archive() as archive, archive.db.write() as conn:
        add_ae(conn, RegisteredAE(ae_title, host, port))
    typer.echo(f"{ae_title} -> {host}:{port}")


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
        typer.echo(json.dumps([dataclasses.asdict(ae) for ae in aes]))
    for ae in [] if as_json else aes:
        typer.echo(f"{ae.ae_title:<16} {ae.host}:{ae.port}")


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
        typer.echo(json.dumps([dataclasses.asdict(j) for j in found]))
        return
    for j in found:
        typer.echo(
            f"{j.id:>6} {j.kind:<16} {j.status:<10} {j.attempts}/{j.max_attempts} "
            f"{j.StudyInstanceUID or '-'} {j.last_error or ''}"
        )


@jobs_app.command("show")
def jobs_show(job_id: JobId) -> None:
    """One job, as JSON."""
    with opened_archive() as archive, archive.db.read() as conn:
        found = get_job(conn, job_id)
    if found is None:
        console.print(f"[red]no job {job_id}[/red]")
        raise typer.Exit(1)
    typer.echo(json.dumps(dataclasses.asdict(found), indent=2))


@jobs_app.command("retry")
def jobs_retry(job_id: JobId) -> None:
    """Queue a failed job again with fresh attempts."""
    with opened_archive() as archive:
        retried = retry(archive.db, job_id)
    if not retried:
        console.print(f"[red]job {job_id} is not failed[/red]")
        raise typer.Exit(1)
    typer.echo(f"job {job_id} queued")


@app.command()
def stats(as_json: AsJson = False) -> None:
    """Counts of patients, studies, series and instances."""
    with opened_archive() as archive, archive.db.read() as conn:
        found = counts(conn)
    if as_json:
        typer.echo(json.dumps(dataclasses.asdict(found)))
    else:
        for name, value in dataclasses.asdict(found).items():
            typer.echo(f"{name:>10}: {value}")


@app.command()
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
        typer.echo(f"{report.indexed} indexed instances, {report.blobs} stored objects")
        for name in ("missing", "mismatched", "orphans", "strays", "in_flight"):
            for key in getattr(report, name):
                action = report.repaired.get(key, "")
                typer.echo(f"{name:>10}: {key}" + (f" -> {action}" if action else ""))
        typer.echo("consistent" if report.consistent else "INCONSISTENT")
    if not report.consistent:
        raise typer.Exit(1)
