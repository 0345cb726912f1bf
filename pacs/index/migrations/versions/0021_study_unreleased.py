"""A study whose last DIMSE send did not end with an A-RELEASE waits longer to be stable.

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A plain ADD COLUMN with a constant default: in place on SQLite and PostgreSQL.
    op.add_column(
        "study",
        sa.Column("unreleased", sa.Boolean(), nullable=False, server_default=sa.false()),
    )


def downgrade() -> None:
    # A plain drop (native on SQLite >= 3.35): a batch copy of study would cascade.
    op.drop_column("study", "unreleased")
