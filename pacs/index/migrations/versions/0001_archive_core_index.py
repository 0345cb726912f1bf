"""Archive core index: facilities, patient/study/series/instance, change feed.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

UID = sa.String(length=64)
WHEN = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "facility",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("created_at", WHEN, nullable=False),
        sa.UniqueConstraint("name", name="uq_facility_name"),
    )
    op.create_table(
        "patient",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "facility_id",
            sa.Integer(),
            sa.ForeignKey("facility.id", name="fk_patient_facility_id"),
            nullable=False,
        ),
        sa.Column("patient_id", sa.Text(), nullable=False),
        sa.Column("issuer_of_patient_id", sa.Text(), nullable=False),
        sa.Column("patient_name", sa.Text()),
        sa.Column("patient_birth_date", sa.String(length=16)),
        sa.Column("patient_sex", sa.String(length=16)),
        sa.Column("updated_at", WHEN, nullable=False),
        sa.UniqueConstraint(
            "facility_id", "patient_id", "issuer_of_patient_id", name="uq_patient_facility_id"
        ),
    )
    op.create_table(
        "study",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("study_instance_uid", UID, nullable=False),
        sa.Column(
            "patient_fk",
            sa.Integer(),
            sa.ForeignKey("patient.id", name="fk_study_patient_fk"),
            nullable=False,
        ),
        sa.Column("study_date", sa.String(length=16)),
        sa.Column("study_time", sa.String(length=32)),
        sa.Column("accession_number", sa.Text()),
        sa.Column("study_id", sa.Text()),
        sa.Column("study_description", sa.Text()),
        sa.Column("referring_physician_name", sa.Text()),
        sa.Column("modalities_in_study", sa.Text()),
        sa.Column("created_at", WHEN, nullable=False),
        sa.Column("last_received_at", WHEN, nullable=False),
        sa.UniqueConstraint("study_instance_uid", name="uq_study_study_instance_uid"),
    )
    for column in ("patient_fk", "study_date", "accession_number", "last_received_at"):
        op.create_index(f"ix_study_{column}", "study", [column])
    op.create_table(
        "series",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("series_instance_uid", UID, nullable=False),
        sa.Column(
            "study_fk",
            sa.Integer(),
            sa.ForeignKey("study.id", name="fk_series_study_fk"),
            nullable=False,
        ),
        sa.Column("modality", sa.String(length=16)),
        sa.Column("series_number", sa.Integer()),
        sa.Column("series_description", sa.Text()),
        sa.Column("body_part_examined", sa.Text()),
        sa.Column("created_at", WHEN, nullable=False),
        sa.Column("last_received_at", WHEN, nullable=False),
        sa.UniqueConstraint("series_instance_uid", name="uq_series_series_instance_uid"),
    )
    op.create_index("ix_series_study_fk", "series", ["study_fk"])
    op.create_index("ix_series_modality", "series", ["modality"])
    op.create_table(
        "instance",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("sop_instance_uid", UID, nullable=False),
        sa.Column(
            "series_fk",
            sa.Integer(),
            sa.ForeignKey("series.id", name="fk_instance_series_fk"),
            nullable=False,
        ),
        sa.Column(
            "facility_id",
            sa.Integer(),
            sa.ForeignKey("facility.id", name="fk_instance_facility_id"),
            nullable=False,
        ),
        sa.Column("sop_class_uid", UID, nullable=False),
        sa.Column("instance_number", sa.Integer()),
        sa.Column("transfer_syntax_uid", UID, nullable=False),
        sa.Column("rows", sa.Integer()),
        sa.Column("columns", sa.Integer()),
        sa.Column("number_of_frames", sa.Integer()),
        sa.Column("specific_character_set", sa.Text()),
        sa.Column("blob_key", sa.String(length=255), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("received_at", WHEN, nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("calling_ae", sa.String(length=16)),
        sa.Column("remote_host", sa.Text()),
        sa.UniqueConstraint("sop_instance_uid", name="uq_instance_sop_instance_uid"),
        sa.UniqueConstraint("blob_key", name="uq_instance_blob_key"),
    )
    op.create_index("ix_instance_series_fk", "instance", ["series_fk"])
    op.create_table(
        "change",
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
        sa.Column("created_at", WHEN, nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("study_instance_uid", UID, nullable=False),
        sa.Column("series_instance_uid", UID),
        sa.Column("sop_instance_uid", UID),
        sa.Column("detail", sa.Text()),
    )
    op.create_index("ix_change_study_instance_uid_seq", "change", ["study_instance_uid", "seq"])


def downgrade() -> None:
    for table in ("change", "instance", "series", "study", "patient", "facility"):
        op.drop_table(table)
