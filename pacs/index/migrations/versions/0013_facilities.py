"""Facilities: each facility's AE title, the facilities a DIMSE peer speaks for, per-study
sharing grants between facilities, and the facility a webhook subscription belongs to.

Existing rows keep their meaning: a facility without an AE title receives nothing over DIMSE
but what is sent to the archive's own AE title (as before), a peer without facilities speaks
for the facility of the AE title it calls, and an existing subscription stays global.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A unique index, not a constraint: SQLite would rebuild the table patients refer to.
    op.add_column("facility", sa.Column("ae_title", sa.String(16), nullable=True))
    op.create_index("uq_facility_ae_title", "facility", ["ae_title"], unique=True)
    op.add_column("application_entity", sa.Column("facilities", sa.Text(), nullable=True))
    op.add_column("webhook", sa.Column("facility", sa.String(64), nullable=True))
    op.create_table(
        "study_share",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "study_fk",
            sa.Integer(),
            sa.ForeignKey("study.id", name="fk_study_share_study_fk", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column(
            "facility_id",
            sa.Integer(),
            sa.ForeignKey("facility.id", name="fk_study_share_facility_id"),
            nullable=False,
        ),
        sa.Column("granted_by", sa.Text(), nullable=False),
        sa.Column("granted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_by", sa.Text(), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_study_share_study_fk", "study_share", ["study_fk", "facility_id"])


def downgrade() -> None:
    op.drop_index("ix_study_share_study_fk", table_name="study_share")
    op.drop_table("study_share")
    op.drop_column("webhook", "facility")
    op.drop_column("application_entity", "facilities")
    op.drop_index("uq_facility_ae_title", table_name="facility")
    op.drop_column("facility", "ae_title")
