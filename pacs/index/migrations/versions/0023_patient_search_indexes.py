"""Indexes for the patient-level search keys: PatientID across facilities, and PatientName
(matched case-insensitively: ``lower(patient_name)``, also for prefix wild cards on PostgreSQL).
Found by bench/index_growth.py: both were sequential scans of the patient table.

Revision ID: 0023
Revises: 0021
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0023"
down_revision = "0021"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_patient_patient_id", "patient", ["patient_id"])
    if op.get_bind().dialect.name == "postgresql":
        # text_pattern_ops: LIKE 'abc%' can use it whatever the database's collation.
        name = sa.text("lower(patient_name) text_pattern_ops")
    else:
        name = sa.text("lower(patient_name)")
    op.create_index("ix_patient_patient_name_lower", "patient", [name])


def downgrade() -> None:
    op.drop_index("ix_patient_patient_name_lower", table_name="patient")
    op.drop_index("ix_patient_patient_id", table_name="patient")
