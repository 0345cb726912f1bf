"""AI results: runs (one per job) and their findings.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

WHEN = sa.DateTime(timezone=True)
ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "ai_run",
        sa.Column("id", ID, primary_key=True),
        sa.Column("job_id", ID, nullable=False),
        sa.Column("study_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("series_instance_uid", sa.String(length=64)),
        sa.Column("model_name", sa.String(length=64), nullable=False),
        sa.Column("model_version", sa.String(length=32), nullable=False),
        sa.Column("outcome", sa.String(length=32), nullable=False),
        sa.Column("rejections", sa.Text(), nullable=False),
        sa.Column("sr_sop_instance_uid", sa.String(length=64)),
        sa.Column("seg_sop_instance_uid", sa.String(length=64)),
        sa.Column("seconds", sa.Float(), nullable=False),
        sa.Column("created_at", WHEN, nullable=False),
        sa.UniqueConstraint("job_id", name="uq_ai_run_job_id"),
    )
    op.create_index("ix_ai_run_study_instance_uid", "ai_run", ["study_instance_uid"])
    op.create_table(
        "finding",
        sa.Column("id", ID, primary_key=True),
        sa.Column(
            "run_fk",
            ID,
            sa.ForeignKey("ai_run.id", name="fk_finding_run_fk", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("tracking_uid", sa.String(length=64), nullable=False),
        sa.Column("x", sa.Float(), nullable=False),
        sa.Column("y", sa.Float(), nullable=False),
        sa.Column("z", sa.Float(), nullable=False),
        sa.Column("diameter_mm", sa.Float(), nullable=False),
        sa.Column("probability", sa.Float(), nullable=False),
    )
    op.create_index("ix_finding_run_fk", "finding", ["run_fk"])


def downgrade() -> None:
    op.drop_table("finding")
    op.drop_table("ai_run")
