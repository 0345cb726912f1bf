"""The audit trail: one hash-chained row per access to or change of patient data.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_event",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
        sa.Column("day", sa.String(10), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("outcome", sa.String(1), nullable=False),
        sa.Column("outcome_reason", sa.Text()),
        sa.Column("subject", sa.Text()),
        sa.Column("roles", sa.Text(), nullable=False),
        sa.Column("facility", sa.Text()),
        sa.Column("ae_title", sa.Text()),
        sa.Column("token_id", sa.Text()),
        sa.Column("remote_address", sa.Text()),
        sa.Column("patient_id", sa.Text()),
        sa.Column("issuer_of_patient_id", sa.Text()),
        sa.Column("study_instance_uid", sa.String(64)),
        sa.Column("series_instance_uid", sa.String(64)),
        sa.Column("sop_instance_uid", sa.String(64)),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.UniqueConstraint("day", "seq", name="uq_audit_event_day"),
    )
    for column in ("at", "subject", "patient_id", "study_instance_uid"):
        op.create_index(f"ix_audit_event_{column}", "audit_event", [column])


def downgrade() -> None:
    for column in ("at", "subject", "patient_id", "study_instance_uid"):
        op.drop_index(f"ix_audit_event_{column}", table_name="audit_event")
    op.drop_table("audit_event")
