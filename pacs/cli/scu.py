"""The DICOM client commands of the composition root: ``pacs send`` and ``pacs echo``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from pacs.dimse.scu import Peer, SendReport, echo, scan, send

console = Console(stderr=True)

# The peer defaults to this archive as its own settings describe it (PACS_HOST, ...), so that
# `pacs echo` and `pacs send` reach the server `pacs serve` runs with the same environment.
Host = Annotated[str, typer.Option(envvar="PACS_HOST", help="Peer host.")]
Port = Annotated[int, typer.Option(envvar="PACS_DICOM_PORT", help="Peer DICOM port.")]
CallingAet = Annotated[str, typer.Option("--aet", help="Our (calling) AE title.")]
CalledAet = Annotated[
    str, typer.Option("--called-aet", envvar="PACS_AE_TITLE", help="The peer's (called) AE title.")
]


def send_command(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders (recursive).")],
    host: Host = "127.0.0.1",
    port: Port = 11112,
    aet: CallingAet = "PACS_SCU",
    called_aet: CalledAet = "PACS",
    associations: Annotated[int, typer.Option(min=1, max=64, help="Parallel associations.")] = 1,
) -> None:
    """C-STORE DICOM files to a peer, each in its own transfer syntax."""
    report = SendReport()
    files = scan(paths, report)
    peer = Peer(host, port, called_aet, aet)
    columns = (TextColumn("C-STORE"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("send", total=len(files))
        send(files, peer, report, associations, lambda *_: progress.advance(task))
    for path, reason in sorted(report.failed.items()):
        console.print(f"[red]failed[/red] {path}: {reason}")
    for path, reason in sorted(report.skipped.items()):
        console.print(f"[yellow]skipped[/yellow] {path}: {reason}")
    typer.echo(
        f"sent {report.sent} ({report.warnings} with warnings), failed {len(report.failed)}, "
        f"skipped {len(report.skipped)} (not DICOM)"
    )
    if not report.ok or not files:
        raise typer.Exit(1)


def echo_command(
    host: Host = "127.0.0.1",
    port: Port = 11112,
    aet: CallingAet = "PACS_SCU",
    called_aet: CalledAet = "PACS",
) -> None:
    """C-ECHO a peer."""
    try:
        code = echo(Peer(host, port, called_aet, aet))
    except ConnectionError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    typer.echo(f"C-ECHO {called_aet}@{host}:{port}: status 0x{code:04X}")
    if code != 0:
        raise typer.Exit(1)
