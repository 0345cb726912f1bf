"""DICOM over TLS: whether C-MOVE sub-associations to a registered AE use TLS.

Peers registered before this revision are reached over plain TCP, as before (an administrator
switches one with ``pacs ae add ... --tls``).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "application_entity",
        sa.Column("tls", sa.Boolean(), nullable=False, server_default=sa.false()),
    )


def downgrade() -> None:
    op.drop_column("application_entity", "tls")
