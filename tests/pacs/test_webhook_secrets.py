"""Webhook signing secrets at rest: sealed with the archive's AES key (pacs.secretbox), one key
file shared by every node of a site, rows from before sealing sealed on start."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from pacs.egress import EgressPolicy
from pacs.errors import UnsafeSecret
from pacs.index import Database, upgrade
from pacs.index.schema import change, webhook
from pacs.secretbox import SealedSecretError, SecretBox
from pacs.webhooks import add_subscription, claim_deliveries, fill_outbox, seal_plain_rows


def test_nodes_given_one_key_file_open_each_others_secrets(tmp_path: Path) -> None:
    """PACS_SECRET_KEY_FILE: any node's dispatcher may deliver any subscription's events."""
    shared = tmp_path / "webhook-key"
    with pytest.raises(UnsafeSecret, match="not a file"):
        SecretBox.at(tmp_path / "node-1", shared)  # never made by pacs
    shared.write_bytes(os.urandom(32))
    shared.chmod(0o644)
    with pytest.raises(UnsafeSecret, match="chmod 600"):
        SecretBox.at(tmp_path / "node-1", shared)
    shared.chmod(0o600)
    sealed = SecretBox.at(tmp_path / "node-1", shared).seal("s3cret")
    assert SecretBox.at(tmp_path / "node-2", shared).open(sealed) == "s3cret"
    assert not (tmp_path / "node-2" / "secret-key").exists()
    with pytest.raises(SealedSecretError):  # a node on its own home key cannot
        SecretBox.at(tmp_path / "node-3").open(sealed)


def test_secrets_are_sealed_at_rest(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'index.db'}")
    upgrade(db)
    box = SecretBox.at(tmp_path / "home")
    assert (tmp_path / "home" / "secret-key").stat().st_mode & 0o777 == 0o600
    assert SecretBox.at(tmp_path / "home").open(box.seal("same key")) == "same key"
    loopback = EgressPolicy.parse(["127.0.0.1"])
    made = add_subscription(
        db, "http://127.0.0.1:9/", ["study.stable"], "s3cret", egress=loopback, box=box
    )
    assert made.secret == "s3cret"
    with db.write() as conn:
        stored = conn.execute(select(webhook.c.secret)).scalar_one()
        # A subscription from before sealing: its secret as given.
        conn.execute(
            webhook.insert().values(
                url="http://127.0.0.1:9/",
                secret="plain-old",
                events='["study.stable"]',
                cursor_seq=0,
                created_at=datetime.now(UTC),
            )
        )
    assert "s3cret" not in stored and box.open(stored) == "s3cret"
    with pytest.raises(SealedSecretError):
        SecretBox(b"x" * 32).open(stored)
    assert seal_plain_rows(db, box) == 1
    assert seal_plain_rows(db, box) == 0
    with db.read() as conn:
        secrets = list(conn.execute(select(webhook.c.secret).order_by(webhook.c.id)).scalars())
    assert all(s.startswith("aesgcm:") for s in secrets)
    assert [box.open(s) for s in secrets] == ["s3cret", "plain-old"]
    # Deliveries are signed with the secret in clear.
    with db.write() as conn:
        conn.execute(
            change.insert().values(
                created_at=datetime.now(UTC), kind="study.stable", study_instance_uid="1.2.3"
            )
        )
    fill_outbox(db, settle=timedelta(0))
    claimed = claim_deliveries(db, timedelta(seconds=30), box)
    assert sorted(d.secret for d in claimed) == ["plain-old", "s3cret"]
    db.dispose()
