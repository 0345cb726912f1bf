"""``pacs audit``: prove the audit trail intact, and export it for a site's SIEM.

``verify`` walks the hash chain: exit 0 with ``intact: N events`` and the head hash (record
it elsewhere: a chain cut at its very end shows only against a recorded head), or exit 1
naming the first broken link (day, seq, id, what is wrong).

``export`` writes the events of a period, oldest first, one per line: DICOM audit messages
(PS3.15 A.5.1 ``<AuditMessage>`` XML, the default) or FHIR AuditEvent JSON (NDJSON). The
export is itself audited (``audit_read``).
"""

from __future__ import annotations

import enum
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated, TextIO

import typer
from sqlalchemy import Connection

from pacs.audit import (
    AuditAction,
    AuditEvent,
    EventFilter,
    iter_events,
    record_event,
    verify_chain,
)
from pacs.audit.codes import SOURCE_ID
from pacs.audit.dicom_xml import audit_message_xml
from pacs.audit.fhir import audit_event_resource
from pacs.cli.common import opened_index
from pacs.cli.export import operator
from pacs.index.database import as_utc

audit_app = typer.Typer(
    help="The audit trail: verify the chain, export events.", no_args_is_help=True
)


class Format(enum.StrEnum):
    DICOM = "dicom"
    FHIR = "fhir"


@audit_app.command("verify")
def verify() -> None:
    """Check every event's hash and link; exit 1 at the first broken link."""
    with opened_index() as db, db.read() as conn:
        report = verify_chain(conn)
    if report.broken is not None:
        typer.echo(f"broken after {report.events} intact events: {report.broken}", err=True)
        raise typer.Exit(1)
    typer.echo(f"intact: {report.events} events; head {report.head}")


@audit_app.command("export")
def export(
    since: Annotated[
        datetime, typer.Option(help="From this date/time (UTC unless it says otherwise).")
    ],
    until: Annotated[
        datetime | None, typer.Option(help="Up to (not including) this date/time.")
    ] = None,
    format: Annotated[
        Format, typer.Option("--format", help="dicom: PS3.15 XML; fhir: NDJSON.")
    ] = Format.DICOM,
    out: Annotated[
        Path | None, typer.Option("--out", help="File to write (default: stdout).")
    ] = None,
) -> None:
    """Events from --since up to --until, one per line."""
    where = EventFilter(since=as_utc(since), until=None if until is None else as_utc(until))
    with opened_index() as db:
        record_event(
            db,
            AuditEvent(
                AuditAction.AUDIT_READ,
                subject=operator(),
                detail={
                    "export": format.value,
                    "since": since.isoformat(),
                    "until": None if until is None else until.isoformat(),
                },
            ),
        )
        with db.read() as conn:
            if out is None:
                count = _write(conn, where, format, sys.stdout)
            else:
                with out.open("w", encoding="utf-8") as stream:
                    count = _write(conn, where, format, stream)
    typer.echo(f"exported {count} events", err=True)


def _write(conn: Connection, where: EventFilter, format: Format, stream: TextIO) -> int:
    count = 0
    for stored in iter_events(conn, where):
        if format is Format.DICOM:
            line = audit_message_xml(stored, SOURCE_ID)
        else:
            line = json.dumps(audit_event_resource(stored, SOURCE_ID), separators=(",", ":"))
        stream.write(line + "\n")
        count += 1
    return count
