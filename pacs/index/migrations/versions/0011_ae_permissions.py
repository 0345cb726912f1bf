"""DIMSE access control: what each registered AE may do, and the host it must call from.

Peers registered before this revision were registered as C-MOVE destinations while any AE
could store, query and retrieve; they keep every permission, as before (an administrator
narrows them with ``pacs ae add ... --permit``).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "application_entity",
        sa.Column(
            "permissions",
            sa.Text(),
            nullable=False,
            server_default="store,find,retrieve,destination",
        ),
    )
    op.add_column("application_entity", sa.Column("expected_host", sa.Text()))


def downgrade() -> None:
    op.drop_column("application_entity", "expected_host")
    op.drop_column("application_entity", "permissions")
