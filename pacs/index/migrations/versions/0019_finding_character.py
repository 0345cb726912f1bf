"""Each AI finding's character from its outline: type with its probability, long and short
axis, mean diameter, volume and solid-component diameter. NULL for findings saved before.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None

COLUMNS = (
    "type_probability",
    "long_axis_mm",
    "short_axis_mm",
    "mean_diameter_mm",
    "volume_mm3",
    "solid_diameter_mm",
)


def upgrade() -> None:
    # Plain ADD COLUMNs, no batch copy of the table (see 0010).
    op.add_column("finding", sa.Column("nodule_type", sa.String(16)))
    for name in COLUMNS:
        op.add_column("finding", sa.Column(name, sa.Float()))


def downgrade() -> None:
    # Plain drops too: a batch copy of finding would cascade-delete what refers to it.
    for name in ("nodule_type", *COLUMNS):
        op.drop_column("finding", name)
