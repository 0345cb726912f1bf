"""AI run summaries for the worklist: operating point, reportable count, highest probability
and largest diameter on each run, backfilled from the findings already stored; and the run's
study row (an integer key the worklist looks runs up by).

Runs saved before this revision kept only the findings reported at the model's operating
point (the pipeline drops the others before saving), so every stored finding of theirs is
reportable and their operating point is unknown (NULL).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMNs, no batch copy of ai_run: on SQLite a batch operation recreates the
    # table, and dropping the old one (foreign keys on) cascades to every finding row.
    op.add_column("ai_run", sa.Column("report_threshold", sa.Float()))
    op.add_column(
        "ai_run", sa.Column("reportable_count", sa.Integer(), nullable=False, server_default="0")
    )
    op.add_column("ai_run", sa.Column("max_probability", sa.Float()))
    op.add_column("ai_run", sa.Column("max_diameter_mm", sa.Float()))
    op.add_column("ai_run", sa.Column("study_fk", sa.Integer()))
    ai_run = sa.table(
        "ai_run",
        sa.column("id", sa.Integer()),
        sa.column("reportable_count", sa.Integer()),
        sa.column("max_probability", sa.Float()),
        sa.column("max_diameter_mm", sa.Float()),
        sa.column("study_instance_uid", sa.String()),
        sa.column("study_fk", sa.Integer()),
    )
    study = sa.table("study", sa.column("id", sa.Integer()), sa.column("study_instance_uid"))
    finding = sa.table(
        "finding",
        sa.column("run_fk", sa.Integer()),
        sa.column("probability", sa.Float()),
        sa.column("diameter_mm", sa.Float()),
    )
    of_run = finding.c.run_fk == ai_run.c.id
    # One UPDATE with correlated subqueries: the same statement on SQLite and PostgreSQL.
    op.get_bind().execute(
        ai_run.update().values(
            reportable_count=sa.select(sa.func.count())
            .select_from(finding)
            .where(of_run)
            .scalar_subquery(),
            max_probability=sa.select(sa.func.max(finding.c.probability))
            .where(of_run)
            .scalar_subquery(),
            max_diameter_mm=sa.select(sa.func.max(finding.c.diameter_mm))
            .where(of_run)
            .scalar_subquery(),
            study_fk=sa.select(study.c.id)
            .where(study.c.study_instance_uid == ai_run.c.study_instance_uid)
            .scalar_subquery(),
        )
    )
    op.create_index("ix_ai_run_study_fk", "ai_run", ["study_fk", "id"])


def downgrade() -> None:
    op.drop_index("ix_ai_run_study_fk", table_name="ai_run")
    for column in (
        "study_fk",
        "max_diameter_mm",
        "max_probability",
        "reportable_count",
        "report_threshold",
    ):
        op.drop_column("ai_run", column)
