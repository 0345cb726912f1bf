"""Webhooks: subscriptions (with their change-feed cursor) and the delivery outbox.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

WHEN = sa.DateTime(timezone=True)
ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "webhook",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("secret", sa.Text(), nullable=False),
        sa.Column("events", sa.Text(), nullable=False),
        sa.Column("cursor_seq", sa.BigInteger(), nullable=False),
        sa.Column("created_at", WHEN, nullable=False),
    )
    op.create_table(
        "webhook_delivery",
        sa.Column("id", ID, primary_key=True),
        sa.Column(
            "webhook_fk",
            sa.Integer(),
            sa.ForeignKey("webhook.id", name="fk_webhook_delivery_webhook_fk", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("change_seq", sa.BigInteger(), nullable=False),
        sa.Column("study_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", WHEN, nullable=False),
        sa.Column("lease_until", WHEN),
        sa.Column("last_error", sa.Text()),
        sa.Column("created_at", WHEN, nullable=False),
        sa.Column("delivered_at", WHEN),
        sa.UniqueConstraint("webhook_fk", "change_seq", name="uq_webhook_delivery_webhook_fk"),
    )
    op.create_index(
        "ix_webhook_delivery_status_next_attempt_at",
        "webhook_delivery",
        ["status", "next_attempt_at"],
    )
    op.create_index(
        "ix_webhook_delivery_webhook_fk_study",
        "webhook_delivery",
        ["webhook_fk", "study_instance_uid", "id"],
    )


def downgrade() -> None:
    op.drop_table("webhook_delivery")
    op.drop_table("webhook")
