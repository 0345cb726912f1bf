"""Alembic migrations: step by step up, down and up again, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import inspect

from pacs.errors import SchemaOutdated
from pacs.index import Database, check_at_head, upgrade
from pacs.index.migrate import alembic_config
from pacs.index.schema import metadata
from tests.conftest import database_url


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_migrations_reach_the_schema_the_code_uses(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    db = Database(database_url(kind, tmp_path, request))
    upgrade(db, "0001")
    with pytest.raises(SchemaOutdated, match="pacs db upgrade"):
        check_at_head(db)
    upgrade(db)
    check_at_head(db)
    tables = set(inspect(db.engine).get_table_names()) - {"alembic_version"}
    assert tables == set(metadata.tables)
    command.downgrade(alembic_config(db), "base")
    assert set(inspect(db.engine).get_table_names()) <= {"alembic_version"}
    upgrade(db)
    check_at_head(db)
    db.dispose()
