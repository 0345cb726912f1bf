"""The ``pacs`` command line: the composition root that assembles a process from settings.

Commands live by concern: serve.py (the archive's processes), admin.py (schema, peers,
tokens, jobs, stats, fsck, versions), backup.py (backup and restore), facility.py (facilities
and their AE titles), share.py (sharing grants), ai.py (models, workers, findings),
webhooks.py, scu.py (send, echo), export.py (de-identified export), audit.py (the audit
trail); common.py opens what they share (settings, logging, the archive or the index).
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from typing import Any, NoReturn

import typer

from pacs.cli.common import console
from pacs.errors import ArchiveError

__all__ = ["app", "build", "main"]

# `pacs --help` lists commands, then groups, each in the order given here: (name, module in
# pacs.cli, attribute). A command's module is imported only when the app is built with it, so
# `pacs send` does not pay for the server's, the models' or the exporter's imports.
_COMMANDS = [
    ("worker", "ai", "worker_command"),
    ("findings", "ai", "findings_command"),
    ("send", "scu", "send_command"),
    ("echo", "scu", "echo_command"),
    ("export", "export", "export_command"),
    ("serve", "serve", "serve"),
    ("stats", "admin", "stats"),
    ("fsck", "admin", "fsck"),
    ("versions", "admin", "versions"),
    ("backup", "backup", "backup_command"),
    ("restore", "backup", "restore_command"),
]
_GROUPS = [
    ("db", "admin", "db_app"),
    ("ae", "admin", "ae_app"),
    ("facility", "facility", "facility_app"),
    ("token", "admin", "token_app"),
    ("jobs", "admin", "jobs_app"),
    ("model", "ai", "model_app"),
    ("webhook", "webhooks", "webhook_app"),
    ("share", "share", "share_app"),
    ("audit", "audit", "audit_app"),
]

# The DICOM client commands, run as often as storescu/echoscu, whose start and end count as
# much as their work (bench/receive_path.py, a shared 2-core machine):
# - they decode no pixel data and download nothing, so the optional libraries pydicom imports
#   when installed (numpy for its pixel handlers, requests for its test-data downloads, ~0.3 s)
#   are marked absent before anything is imported: ``sys.modules[name] = None`` makes
#   ``import name`` raise ImportError, which pydicom takes as "not installed";
# - once they are done (association released, output written), they exit without the
#   interpreter's teardown of every module (~0.15 s): nothing of theirs is left to flush.
_CLIENTS = frozenset(("send", "echo"))
_NOT_IMPORTED = ("numpy", "requests")


def _load(module: str, attribute: str) -> Any:
    return getattr(importlib.import_module(f"pacs.cli.{module}"), attribute)


def build(only: str | None = None) -> typer.Typer:
    """The ``pacs`` app: every command and group, or only the one named ``only``."""
    app = typer.Typer(
        help="Medical imaging archive with AI-assisted diagnosis.", no_args_is_help=True
    )
    for name, module, attribute in _COMMANDS:
        if only in (None, name):
            app.command(name)(_load(module, attribute))
    for name, module, attribute in _GROUPS:
        if only in (None, name):
            app.add_typer(_load(module, attribute), name=name)
    if only is not None:
        # With one command typer would make it the whole program (`pacs ARGS`); a callback
        # keeps it a subcommand (`pacs send ARGS`), as in the full app.
        app.callback()(lambda: None)
    return app


def __getattr__(name: str) -> Any:
    if name == "app":
        return build()
    raise AttributeError(f"module 'pacs.cli' has no attribute {name!r}")


def _named(argv: list[str]) -> str | None:
    """The command or group ``argv`` names, when it names one and asks for nothing else."""
    known = {name for name, _, _ in _COMMANDS + _GROUPS}
    return argv[1] if len(argv) > 1 and argv[1] in known else None


def _exit_now(code: object) -> NoReturn:
    """Exit with *code* (as ``sys.exit`` takes it) once the output is flushed, skipping the
    interpreter's teardown."""
    if isinstance(code, str):
        print(code, file=sys.stderr)
    status = code if isinstance(code, int) else (0 if code is None else 1)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def main() -> None:
    """Entry point of the ``pacs`` command."""
    named = _named(sys.argv)
    if named in _CLIENTS:
        for library in _NOT_IMPORTED:
            sys.modules.setdefault(library, None)  # type: ignore[arg-type]
    try:
        build(named)()
    except SystemExit as done:
        if named in _CLIENTS:
            _exit_now(done.code)
        raise
    except ArchiveError as exc:
        console.print(f"[red]error:[/red] {exc}")
        sys.exit(2)
    except Exception as exc:
        from models.errors import ModelError

        if not isinstance(exc, ModelError):
            raise
        console.print(f"[red]error:[/red] {exc}")
        sys.exit(2)
