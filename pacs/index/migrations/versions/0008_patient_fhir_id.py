"""Patient FHIR ids: an opaque random token per patient instead of the row's sequence number.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-27
"""

from __future__ import annotations

import secrets

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("patient", sa.Column("fhir_id", sa.String(length=32)))
    conn = op.get_bind()
    patient = sa.table("patient", sa.column("id", sa.Integer()), sa.column("fhir_id", sa.String()))
    ids = [row[0] for row in conn.execute(sa.select(patient.c.id))]
    if ids:
        conn.execute(
            patient.update().where(patient.c.id == sa.bindparam("pk")),
            [{"pk": pk, "fhir_id": secrets.token_hex(16)} for pk in ids],
        )
    with op.batch_alter_table("patient") as batch:
        batch.alter_column("fhir_id", existing_type=sa.String(length=32), nullable=False)
        batch.create_unique_constraint("uq_patient_fhir_id", ["fhir_id"])


def downgrade() -> None:
    with op.batch_alter_table("patient") as batch:
        batch.drop_constraint("uq_patient_fhir_id", type_="unique")
        batch.drop_column("fhir_id")
