"""The ``pacs`` command line: the composition root that assembles a process from settings.

Commands live by concern: serve.py (the archive's processes), admin.py (schema, peers,
tokens, jobs, stats, fsck, versions), backup.py (backup and restore), facility.py (facilities
and their AE titles), share.py (sharing grants), ai.py (models, workers, findings),
webhooks.py, scu.py (send, echo), export.py (de-identified export), audit.py (the audit
trail); common.py opens what they share (settings, logging, the archive or the index).
"""

from __future__ import annotations

import sys

import typer

from pacs.cli import admin, ai, audit, backup, export, facility, scu, serve, share, webhooks
from pacs.cli.common import console
from pacs.errors import ArchiveError

__all__ = ["app", "main"]

app = typer.Typer(help="Medical imaging archive with AI-assisted diagnosis.", no_args_is_help=True)
# `pacs --help` lists commands, then groups, each in the order they are registered here.
app.command("worker")(ai.worker_command)
app.command("findings")(ai.findings_command)
app.command("send")(scu.send_command)
app.command("echo")(scu.echo_command)
app.command("export")(export.export_command)
app.command("serve")(serve.serve)
app.command("stats")(admin.stats)
app.command("fsck")(admin.fsck)
app.command("versions")(admin.versions)
app.command("backup")(backup.backup_command)
app.command("restore")(backup.restore_command)
app.add_typer(admin.db_app, name="db")
app.add_typer(admin.ae_app, name="ae")
app.add_typer(facility.facility_app, name="facility")
app.add_typer(admin.token_app, name="token")
app.add_typer(admin.jobs_app, name="jobs")
app.add_typer(ai.model_app, name="model")
app.add_typer(webhooks.webhook_app, name="webhook")
app.add_typer(share.share_app, name="share")
app.add_typer(audit.audit_app, name="audit")


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
