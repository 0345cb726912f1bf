"""``pacs share``: show a study to another facility (a referral), list and revoke grants.

The local command line speaks for every facility; grants are attributed to ``cli:<OS user>``.
``pacs share STUDY --to FACILITY`` is short for ``pacs share add STUDY --to FACILITY``.
"""

from __future__ import annotations

import getpass
import json
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperGroup

from pacs.cli.common import console, opened_index

if TYPE_CHECKING:  # the index is imported by the commands that use it
    pass


class _AddByDefault(TyperGroup):
    """A group whose first argument, when it names no command, is a study to share."""

    # ctx: typer's (vendored) click Context, which typer does not export.
    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and not args[0].startswith("-") and args[0] not in self.commands:
            args = ["add", *args]
        return super().parse_args(ctx, args)


share_app = typer.Typer(
    cls=_AddByDefault,
    help="Share studies with other facilities (pacs share STUDY --to FACILITY).",
    no_args_is_help=True,
)


def _by() -> str:
    return f"cli:{getpass.getuser()}"


def _missing(what: str) -> typer.Exit:
    console.print(f"[red]{what}[/red]")
    return typer.Exit(1)


@share_app.command("add")
def share_add(
    study: Annotated[str, typer.Argument(help="Study Instance UID.")],
    to: Annotated[str, typer.Option("--to", help="The facility to show it to.")],
    until: Annotated[
        str | None,
        typer.Option(help="ISO date (through that day, UTC) or date-time; default: until revoked."),
    ] = None,
) -> None:
    """Share STUDY with facility --to; prints the grant as JSON."""
    from pacs.facilities import Scope
    from pacs.sharing import parse_until, share_study

    end = None if until is None else parse_until(until)
    with opened_index() as db, db.write() as conn:
        try:
            share = share_study(conn, Scope.everything(), study, to, _by(), end)
        except LookupError as exc:
            raise _missing(f"no study {study}") from exc
    typer.echo(json.dumps(share.as_json()))


@share_app.command("list")
def share_list(study: Annotated[str, typer.Argument(help="Study Instance UID.")]) -> None:
    """The grants of STUDY, revoked and expired ones included, one JSON object a line."""
    from pacs.facilities import Scope
    from pacs.sharing import study_shares

    with opened_index() as db, db.read() as conn:
        try:
            shares = study_shares(conn, Scope.everything(), study)
        except LookupError as exc:
            raise _missing(f"no study {study}") from exc
    for share in shares:
        typer.echo(json.dumps(share.as_json()))


@share_app.command("revoke")
def share_revoke(
    share_id: Annotated[int, typer.Argument(min=1, max=2**63 - 1, help="The grant's id.")],
) -> None:
    """Revoke grant SHARE_ID at once (revoking a revoked grant changes nothing)."""
    from pacs.facilities import Scope
    from pacs.sharing import revoke_share

    with opened_index() as db, db.write() as conn:
        try:
            share = revoke_share(conn, Scope.everything(), share_id, _by())
        except LookupError as exc:
            raise _missing(f"no sharing grant {share_id}") from exc
    typer.echo(json.dumps(share.as_json()))
