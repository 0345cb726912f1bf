"""Radiologist review: one review per study, its findings as reviewed, and every action taken.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

WHEN = sa.DateTime(timezone=True)
ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
UID = sa.String(length=64)


def upgrade() -> None:
    op.create_table(
        "review",
        sa.Column("id", ID, primary_key=True),
        sa.Column("study_instance_uid", UID, nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column(
            "run_fk", ID, sa.ForeignKey("ai_run.id", name="fk_review_run_fk", ondelete="SET NULL")
        ),
        sa.Column("series_instance_uid", UID, nullable=False),
        sa.Column("ai_sr_sop_instance_uid", UID),
        sa.Column("impression", sa.Text(), nullable=False),
        sa.Column("lung_rads", sa.String(length=8)),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("signed_sr_sop_instance_uid", UID),
        sa.Column("signed_by", sa.Text()),
        sa.Column("signed_at", WHEN),
        sa.Column("signed_report", sa.Text()),
        sa.Column("created_at", WHEN, nullable=False),
        sa.Column("updated_at", WHEN, nullable=False),
        sa.UniqueConstraint("study_instance_uid", name="uq_review_study_instance_uid"),
    )
    op.create_index("ix_review_status", "review", ["status"])
    op.create_table(
        "review_finding",
        sa.Column("id", ID, primary_key=True),
        sa.Column(
            "review_fk",
            ID,
            sa.ForeignKey("review.id", name="fk_review_finding_review_fk", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("tracking_uid", UID, nullable=False),
        sa.Column("origin", sa.String(length=16), nullable=False),
        sa.Column("decision", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text()),
        sa.Column("x", sa.Float(), nullable=False),
        sa.Column("y", sa.Float(), nullable=False),
        sa.Column("z", sa.Float(), nullable=False),
        sa.Column("diameter_mm", sa.Float(), nullable=False),
        sa.Column("probability", sa.Float()),
        sa.Column("updated_at", WHEN, nullable=False),
        sa.UniqueConstraint("review_fk", "tracking_uid", name="uq_review_finding_review_fk"),
    )
    op.create_table(
        "review_action",
        sa.Column("id", ID, primary_key=True),
        sa.Column(
            "review_fk",
            ID,
            sa.ForeignKey("review.id", name="fk_review_action_review_fk", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("at", WHEN, nullable=False),
        sa.Column("actor", sa.Text(), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("tracking_uid", UID),
        sa.Column("detail", sa.Text(), nullable=False),
    )
    op.create_index("ix_review_action_review_fk", "review_action", ["review_fk"])


def downgrade() -> None:
    op.drop_table("review_action")
    op.drop_table("review_finding")
    op.drop_table("review")
