"""The model a job ran with (name, version, weights SHA-256), and the checksum each model
name and version first ran with on this index: a worker whose weights differ is refused.

Revision ID: 0018
Revises: 0015
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("job", sa.Column("model", sa.String(256)))
    op.create_table(
        "model_checksum",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("version", sa.String(32), primary_key=True),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("recorded_by", sa.String(128), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("model_checksum")
    op.drop_column("job", "model")
