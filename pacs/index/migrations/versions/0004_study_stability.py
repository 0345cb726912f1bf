"""Durable study stability: when a study was last marked stable.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A plain ADD COLUMN: SQLite and PostgreSQL both do it in place.
    op.add_column("study", sa.Column("stable_at", sa.DateTime(timezone=True)))


def downgrade() -> None:
    op.drop_column("study", "stable_at")
