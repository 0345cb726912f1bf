"""Findings compared with the patient's prior CT: change, predecessor, volume change, VDT.

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("ai_run", sa.Column("prior_study_instance_uid", sa.String(64)))
    op.add_column("ai_run", sa.Column("prior_interval_days", sa.Integer()))
    op.add_column("finding", sa.Column("change", sa.String(8)))
    op.add_column("finding", sa.Column("prior_tracking_uid", sa.String(64)))
    op.add_column("finding", sa.Column("prior_diameter_mm", sa.Float()))
    op.add_column("finding", sa.Column("volume_change_mm3", sa.Float()))
    op.add_column("finding", sa.Column("doubling_time_days", sa.Float()))


def downgrade() -> None:
    # Plain drops (native on SQLite >= 3.35): a batch copy of ai_run would cascade-delete findings.
    for name in (
        "doubling_time_days",
        "volume_change_mm3",
        "prior_diameter_mm",
        "prior_tracking_uid",
        "change",
    ):
        op.drop_column("finding", name)
    op.drop_column("ai_run", "prior_interval_days")
    op.drop_column("ai_run", "prior_study_instance_uid")
