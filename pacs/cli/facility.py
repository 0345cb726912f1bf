"""``pacs facility``: the facilities sharing this archive and the AE titles they receive on."""

from __future__ import annotations

import dataclasses
import json
from typing import Annotated

import typer

from pacs.cli.common import AsJson, console, load_settings, opened_archive

facility_app = typer.Typer(
    help="Facilities (each sees only its own patients) and their AE titles.",
    no_args_is_help=True,
)


@facility_app.command("add")
def facility_add(
    name: Annotated[str, typer.Argument(help="The facility's name.")],
    ae_title: Annotated[
        str | None,
        typer.Option(
            help="The called AE title its modalities C-STORE to: the DICOM server answers to "
            "it beside PACS_AE_TITLE, and what arrives on it belongs to this facility. "
            "Unchanged for a known facility when not given.",
        ),
    ] = None,
) -> None:
    """Register a facility, or give a known one its AE title."""
    from pacs.facilities import add_facility

    settings = load_settings()
    if ae_title is not None and ae_title == settings.ae_title:
        console.print(
            f"[red]{ae_title} is the archive's own AE title (PACS_AE_TITLE): what arrives on "
            f"it belongs to PACS_FACILITY ({settings.facility})[/red]"
        )
        raise typer.Exit(2)
    with opened_archive(settings) as archive, archive.db.write() as conn:
        added = add_facility(conn, name, ae_title)
    typer.echo(f"{added.name}" + (f" (AE title {added.ae_title})" if added.ae_title else ""))


@facility_app.command("list")
def facility_list(as_json: AsJson = False) -> None:
    """Registered facilities and their AE titles."""
    from pacs.facilities import list_facilities

    with opened_archive() as archive, archive.db.read() as conn:
        found = list_facilities(conn)
    if as_json:
        typer.echo(json.dumps([dataclasses.asdict(f) for f in found]))
        return
    for f in found:
        typer.echo(f"{f.name:<24} {f.ae_title or '-'}")
