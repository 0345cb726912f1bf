"""Webhooks: change-feed events POSTed to subscribers from a durable outbox.

A dispatcher copies matching changes into the outbox (``webhook_delivery``), following each
subscription's cursor through the settled change feed, so ingest never waits on a subscriber.
Deliveries are signed (HMAC-SHA256 over ``timestamp.body`` with the subscription's secret),
carry an idempotency key, are retried with capped exponential back-off until the subscriber
answers 2xx (at least once), and go out in order per study and subscription: a study's next
event waits until the one before it was delivered. Leases let several processes share the
work without sending the same delivery twice at once.

Where deliveries may go is the egress policy's call (pacs.egress): checked when a subscription
is made, and again before every delivery, which goes to the address that was checked; a
redirect is an answer like any other non-2xx one (never followed), so it is retried.

A subscription belongs to a facility (or, made by a global administrator, to none: every
facility) and is sent only the changes of studies that facility sees when the dispatcher
reads them: its own, and those shared with it. Secrets are stored sealed (pacs.secretbox).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import ColumnElement, Connection, and_, delete, exists, select, true
from sqlalchemy.orm import aliased

from pacs.changefeed import DEFAULT_SETTLE, ChangeKind, read_changes, visible
from pacs.egress import EgressPolicy
from pacs.errors import ArchiveError, EgressRefused
from pacs.facilities import Scope, check_name, facility_names
from pacs.index import Database
from pacs.index.records import insert_for
from pacs.index.schema import change, webhook, webhook_delivery
from pacs.outage import Outage
from pacs.secretbox import SecretBox, is_sealed
from pacs.settings import PacsSettings

log = logging.getLogger(__name__)

EVENTS = frozenset(kind.value for kind in ChangeKind)
SIGNATURE_HEADER = "X-PACS-Signature"
TIMESTAMP_HEADER = "X-PACS-Timestamp"
EVENT_HEADER = "X-PACS-Event"
IDEMPOTENCY_HEADER = "Idempotency-Key"
SENDERS = 4  # deliveries one dispatcher sends at once


class InvalidSubscription(ArchiveError):
    pass


@dataclass(frozen=True)
class Subscription:
    """A subscription; *secret* is the signing key in clear (shown once, when made)."""

    id: int
    url: str
    secret: str
    events: list[str]
    cursor_seq: int
    facility: str | None = None  # None: every facility's studies


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """``sha256=<hex>`` of HMAC-SHA256(secret, ``timestamp.body``)."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def configured_egress() -> EgressPolicy:
    """The policy of this process's ``PACS_*`` settings, for callers that pass none.

    The composition root should build it once (``PacsSettings.egress_policy()``) and pass it;
    this fallback keeps a caller that does not yet from sending webhooks anywhere.
    """
    return PacsSettings().egress_policy()


def add_subscription(
    db: Database,
    url: str,
    events: list[str],
    secret: str | None = None,
    from_start: bool = False,
    egress: EgressPolicy | None = None,
    *,
    box: SecretBox,
    facility: str | None = None,
) -> Subscription:
    """Subscribe *url* to *events*; it receives changes from now on (or from the start) of
    the studies *facility* sees (None: every study). The secret is stored sealed by *box*.

    Raises
    ------
    InvalidSubscription
        Unknown events, an unknown facility, or a URL the egress policy refuses (the
        message says why).
    """
    unknown = set(events) - EVENTS
    if not events or unknown:
        raise InvalidSubscription(
            f"unknown event(s) {sorted(unknown)}; choose from {sorted(EVENTS)}"
            if unknown
            else "name at least one event"
        )
    try:
        (egress or configured_egress()).check(url)
    except EgressRefused as exc:
        raise InvalidSubscription(f"webhook URL refused: {exc}") from exc
    secret = secret or secrets.token_urlsafe(32)
    with db.write() as conn:
        if facility is not None and check_name(facility) not in facility_names(conn):
            raise InvalidSubscription(f"no facility {facility!r} (pacs facility add)")
        last = conn.execute(select(change.c.seq).order_by(change.c.seq.desc()).limit(1)).scalar()
        cursor = 0 if from_start or last is None else int(last)
        new_id = conn.execute(
            webhook.insert()
            .values(
                url=url,
                secret=box.seal(secret),
                facility=facility,
                events=json.dumps(sorted(set(events))),
                cursor_seq=cursor,
                created_at=datetime.now(UTC),
            )
            .returning(webhook.c.id)
        ).scalar_one()
    return Subscription(int(new_id), url, secret, sorted(set(events)), cursor, facility)


def _owned_by(scope: Scope) -> ColumnElement[bool]:
    """Subscriptions of *scope*'s facilities (a global scope: all, global ones included)."""
    if scope.facilities is None:
        return true()
    return webhook.c.facility.in_(sorted(scope.facilities))


def list_subscriptions(conn: Connection, scope: Scope) -> list[Subscription]:
    """The subscriptions of *scope*'s facilities, secrets left out (empty)."""
    return [
        Subscription(r.id, r.url, "", json.loads(r.events), r.cursor_seq, r.facility)
        for r in conn.execute(select(webhook).where(_owned_by(scope)).order_by(webhook.c.id))
    ]


def remove_subscription(db: Database, scope: Scope, subscription_id: int) -> bool:
    """Remove a subscription of *scope*'s facilities; False when there is none such."""
    with db.write() as conn:
        removed = conn.execute(
            delete(webhook).where(webhook.c.id == subscription_id, _owned_by(scope))
        )
        return bool(removed.rowcount)


def seal_plain_rows(db: Database, box: SecretBox) -> int:
    """Seal the secrets of subscriptions made before secrets were sealed; how many."""
    with db.write() as conn:
        plain = [
            (row.id, row.secret)
            for row in conn.execute(select(webhook.c.id, webhook.c.secret))
            if not is_sealed(row.secret)
        ]
        for row_id, secret in plain:
            # Unless another process starting beside this one sealed it meanwhile.
            conn.execute(
                webhook.update()
                .where(webhook.c.id == row_id, webhook.c.secret == secret)
                .values(secret=box.seal(secret))
            )
    return len(plain)


def fill_outbox(db: Database, settle: timedelta = DEFAULT_SETTLE, batch: int = 500) -> int:
    """Copy settled changes each subscription wants into the outbox; returns rows added."""
    added = 0
    now = datetime.now(UTC)
    with db.write() as conn:
        query = select(webhook)
        if conn.dialect.name == "postgresql":
            query = query.with_for_update(skip_locked=True)  # one process advances a cursor
        for sub in conn.execute(query).all():
            wanted = set(json.loads(sub.events))
            items = read_changes(conn, sub.cursor_seq, batch, settle, now)
            scope = Scope.everything() if sub.facility is None else Scope.of([sub.facility])
            seen = visible(conn, scope, [item for item in items if item.kind in wanted])
            rows = [
                {
                    "webhook_fk": sub.id,
                    "change_seq": item.seq,
                    "study_instance_uid": item.StudyInstanceUID,
                    "body": json.dumps(
                        {
                            "id": f"{sub.id}-{item.seq}",
                            "event": item.kind,
                            "seq": item.seq,
                            "created_at": item.created_at.isoformat(),
                            "StudyInstanceUID": item.StudyInstanceUID,
                            "SeriesInstanceUID": item.SeriesInstanceUID,
                            "SOPInstanceUID": item.SOPInstanceUID,
                            "detail": item.detail,
                        },
                        sort_keys=True,
                    ),
                    "status": "pending",
                    "attempts": 0,
                    "next_attempt_at": now,
                    "created_at": now,
                }
                for item in seen
            ]
            if rows:
                conn.execute(
                    insert_for(conn)(webhook_delivery).values(rows).on_conflict_do_nothing()
                )
                added += len(rows)
            if items:
                conn.execute(
                    webhook.update().where(webhook.c.id == sub.id).values(cursor_seq=items[-1].seq)
                )
    return added


_ANY_WEBHOOK = select(webhook.c.id).limit(1)


@dataclass(frozen=True)
class Delivery:
    id: int
    url: str
    secret: str
    body: str
    attempts: int


def claim_deliveries(
    db: Database, lease: timedelta, box: SecretBox, limit: int = 32
) -> list[Delivery]:
    """Due deliveries that are first in line for their study and subscription, their
    secrets opened by *box*."""
    now = datetime.now(UTC)
    earlier = aliased(webhook_delivery)
    with db.write() as conn:
        query = (
            select(webhook_delivery.c.id, webhook.c.url, webhook.c.secret, webhook_delivery.c.body)
            .add_columns(webhook_delivery.c.attempts)
            .join(webhook, webhook.c.id == webhook_delivery.c.webhook_fk)
            .where(
                webhook_delivery.c.status == "pending",
                webhook_delivery.c.next_attempt_at <= now,
                (webhook_delivery.c.lease_until.is_(None)) | (webhook_delivery.c.lease_until < now),
                ~exists().where(
                    and_(
                        earlier.c.webhook_fk == webhook_delivery.c.webhook_fk,
                        earlier.c.study_instance_uid == webhook_delivery.c.study_instance_uid,
                        earlier.c.status == "pending",
                        earlier.c.id < webhook_delivery.c.id,
                    )
                ),
            )
            .order_by(webhook_delivery.c.id)
            .limit(limit)
        )
        if conn.dialect.name == "postgresql":
            query = query.with_for_update(of=webhook_delivery, skip_locked=True)
        rows = conn.execute(query).all()
        if rows:
            conn.execute(
                webhook_delivery.update()
                .where(webhook_delivery.c.id.in_([r[0] for r in rows]))
                .values(lease_until=now + lease)
            )
    return [Delivery(r[0], r[1], box.open(r[2]), r[3], r[4]) for r in rows]


def record_result(
    db: Database,
    delivery: Delivery,
    error: str | None,
    backoff: timedelta,
    max_backoff: timedelta,
) -> None:
    now = datetime.now(UTC)
    with db.write() as conn:
        if error is None:
            values: dict[str, Any] = {
                "status": "delivered",
                "delivered_at": now,
                "lease_until": None,
                "attempts": delivery.attempts + 1,
                "last_error": None,
            }
        else:
            delay = min(backoff * 2**delivery.attempts, max_backoff)
            values = {
                "attempts": delivery.attempts + 1,
                "next_attempt_at": now + delay,
                "lease_until": None,
                "last_error": error[:500],
            }
        conn.execute(
            webhook_delivery.update().where(webhook_delivery.c.id == delivery.id).values(**values)
        )


def post(client: httpx.Client, delivery: Delivery, egress: EgressPolicy) -> str | None:
    """POST one delivery to an address *egress* allows now; None on a 2xx answer, else what
    went wrong (a redirect included: it is not followed)."""
    try:
        url, pinned, extensions = egress.check(delivery.url).request_target()
    except EgressRefused as exc:
        return f"refused by the egress policy: {exc}"
    body = delivery.body.encode()
    timestamp = str(int(time.time()))
    event = json.loads(delivery.body)
    headers = {
        "Content-Type": "application/json",
        EVENT_HEADER: event["event"],
        IDEMPOTENCY_HEADER: event["id"],
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: sign(delivery.secret, timestamp, body),
        **pinned,
    }
    try:
        response = client.post(url, content=body, headers=headers, extensions=extensions)
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}"
    if 200 <= response.status_code < 300:
        return None
    if response.is_redirect:
        return f"HTTP {response.status_code} (redirects are not followed)"
    return f"HTTP {response.status_code}"


class Dispatcher:
    """Fills the outbox and delivers it, in a thread, until stopped (run by `pacs serve`)."""

    def __init__(
        self,
        db: Database,
        interval: float = 0.5,
        backoff: timedelta = timedelta(seconds=2),
        max_backoff: timedelta = timedelta(minutes=10),
        settle: timedelta = DEFAULT_SETTLE,
        timeout: float = 5.0,
        egress: EgressPolicy | None = None,
        *,
        box: SecretBox,
        lease: timedelta | None = None,
    ) -> None:
        self.db, self.interval, self.settle, self.box = db, interval, settle, box
        self.backoff, self.max_backoff = backoff, max_backoff
        self.egress = egress or configured_egress()
        # An explicit transport: no proxy from the environment (it would connect by name, past
        # the checked address); SSL_CERT_FILE still counts. No kept-alive connections: requests
        # name addresses, so a TLS connection made for one host name could otherwise carry a
        # request for another name at the same address.
        transport = httpx.HTTPTransport(limits=httpx.Limits(max_keepalive_connections=0))
        self.client = httpx.Client(transport=transport, timeout=timeout, follow_redirects=False)
        self.pool = ThreadPoolExecutor(SENDERS, thread_name_prefix="webhook")
        # How long a claimed delivery is this dispatcher's: by default the longest one POST
        # may take (connect, send, answer), and some.
        self.lease = lease or timedelta(seconds=3 * timeout + 5)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="webhooks", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self.pool.shutdown(wait=True)
        self.client.close()

    def run_once(self, most: int = 32) -> int:
        """Fill the outbox, then send what is due, as many deliveries at a time as there are
        sending threads, until nothing more is due or *most* were sent; how many were.

        No more is claimed than is sent at once: a delivery claimed in a larger batch would
        wait behind the others, past its lease, and another node's dispatcher would claim and
        send it too.
        """
        with self.db.read() as conn:  # no subscription, no delivery (they cascade with it)
            if conn.execute(_ANY_WEBHOOK).first() is None:
                return 0  # and no write transaction to take the index's write lock for nothing
        fill_outbox(self.db, self.settle)
        sent = 0
        while sent < most and not self._stop.is_set():
            claimed = claim_deliveries(self.db, self.lease, self.box, limit=SENDERS)
            list(self.pool.map(self._attempt, claimed))
            sent += len(claimed)
            if len(claimed) < SENDERS:
                break
        return sent

    def _attempt(self, delivery: Delivery) -> None:
        error = post(self.client, delivery, self.egress)
        if error is not None:
            log.info("webhook delivery %d to %s failed: %s", delivery.id, delivery.url, error)
        record_result(self.db, delivery, error, self.backoff, self.max_backoff)

    def _run(self) -> None:
        outage, wait = Outage("webhook dispatcher", log, self.interval), self.interval
        while not self._stop.wait(wait):
            try:
                self.run_once()
            except Exception as exc:  # the index may be down for a while: back off, try again
                wait = outage.failed(exc)
                continue
            outage.succeeded()
            wait = self.interval
