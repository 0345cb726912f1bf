"""Cache of per-series WADO-RS metadata (DICOM JSON, gzip), keyed by the series' version.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "series_metadata",
        sa.Column(
            "series_fk",
            sa.Integer(),
            sa.ForeignKey("series.id", name="fk_series_metadata_series_fk", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("etag", sa.String(length=64), nullable=False),
        # BulkDataURIs in the body are absolute: a body is valid for the base URL it was built for.
        sa.Column("base_url", sa.Text(), nullable=False),
        sa.Column("body_gzip", sa.LargeBinary(), nullable=False),
        sa.Column("built_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("series_metadata")
