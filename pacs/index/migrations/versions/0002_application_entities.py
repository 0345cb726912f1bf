"""Registry of DICOM application entities (C-MOVE destinations).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "application_entity",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("ae_title", sa.String(length=16), nullable=False),
        sa.Column("host", sa.Text(), nullable=False),
        sa.Column("port", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("ae_title", name="uq_application_entity_ae_title"),
    )


def downgrade() -> None:
    op.drop_table("application_entity")
