"""``pacs webhook``: subscriptions of URLs to change-feed events (delivered by ``pacs serve``)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from pacs.cli.common import load_settings, opened_index

webhook_app = typer.Typer(
    help="Webhook subscriptions (change-feed events to URLs).", no_args_is_help=True
)


@webhook_app.command("add")
def webhook_add(
    url: Annotated[str, typer.Argument(help="http(s) URL to POST events to.")],
    events: Annotated[
        str, typer.Option(help="Comma-separated event kinds.")
    ] = "study.stable,findings.ready",
    secret: Annotated[str | None, typer.Option(help="HMAC key (default: generated).")] = None,
    facility: Annotated[
        str | None,
        typer.Option(help="Only changes of this facility's studies (default: every facility)."),
    ] = None,
) -> None:
    """Subscribe URL; prints the id and the signing secret (stored sealed)."""
    from pacs.secretbox import SecretBox
    from pacs.webhooks import add_subscription

    settings = load_settings()
    kinds = [e.strip() for e in events.split(",") if e.strip()]
    with opened_index(settings) as db:
        sub = add_subscription(
            db,
            url,
            kinds,
            secret,
            egress=settings.egress_policy(),
            box=SecretBox.at(settings.home, settings.secret_key_file),
            facility=facility,
        )
    typer.echo(
        json.dumps(
            {
                "id": sub.id,
                "url": sub.url,
                "events": sub.events,
                "facility": sub.facility,
                "secret": sub.secret,
            }
        )
    )


@webhook_app.command("list")
def webhook_list() -> None:
    """Subscriptions (without secrets)."""
    from pacs.facilities import Scope
    from pacs.webhooks import list_subscriptions

    with opened_index() as db, db.read() as conn:
        subs = list_subscriptions(conn, Scope.everything())
    for sub in subs:
        where = sub.facility or "every facility"
        typer.echo(
            f"{sub.id:>4}  {sub.url}  {','.join(sub.events)}  [{where}]  (cursor {sub.cursor_seq})"
        )


@webhook_app.command("remove")
def webhook_remove(
    webhook_id: Annotated[int, typer.Argument(min=1, max=2**63 - 1, help="Subscription id.")],
) -> None:
    from pacs.facilities import Scope
    from pacs.webhooks import remove_subscription

    with opened_index() as db:
        removed = remove_subscription(db, Scope.everything(), webhook_id)
    if not removed:
        typer.echo(f"no webhook {webhook_id}", err=True)
        raise typer.Exit(1)
