"""Alembic migrations of the index, run by ``pacs db upgrade``."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.exc import SQLAlchemyError

from pacs.errors import IndexUnavailable, SchemaOutdated
from pacs.index.database import Database

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(db: Database) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = db.engine
    return config


def upgrade(db: Database, revision: str = "head") -> None:
    """Bring the schema to *revision* (the newest by default)."""
    try:
        command.upgrade(alembic_config(db), revision)
        db.sync()
    except SQLAlchemyError as exc:
        raise IndexUnavailable(f"migration failed: {exc}") from exc


def check_at_head(db: Database) -> None:
    """Raise SchemaOutdated unless the database is at the newest revision."""
    head = ScriptDirectory.from_config(alembic_config(db)).get_current_head()
    try:
        with db.engine.connect() as conn:
            current = MigrationContext.configure(conn).get_current_revision()
    except SQLAlchemyError as exc:
        raise IndexUnavailable(f"cannot read the schema revision: {exc}") from exc
    if current != head:
        raise SchemaOutdated(
            f"index schema is at {current or 'nothing'}, code needs {head}: run `pacs db upgrade`"
        )
