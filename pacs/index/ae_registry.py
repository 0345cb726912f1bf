"""The registry of known DICOM peers (``pacs ae add``): where C-MOVE sends instances."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Connection, delete, select

from pacs.errors import InvalidAE
from pacs.index.records import insert_for
from pacs.index.schema import application_entity
from pacs.uids import is_valid_ae_title


@dataclass(frozen=True)
class RegisteredAE:
    """A known application entity: its AE title and where it listens."""

    ae_title: str
    host: str
    port: int

    def __post_init__(self) -> None:
        if not is_valid_ae_title(self.ae_title):
            raise InvalidAE(f"{self.ae_title!r} is not a valid AE title")
        if not self.host or any(c.isspace() for c in self.host):
            raise InvalidAE(f"{self.host!r} is not a host name or address")
        if not 0 < self.port < 65536:
            raise InvalidAE(f"port {self.port} is out of range")


def add_ae(conn: Connection, ae: RegisteredAE) -> None:
    """Register *peer*, or update the host and port of an AE title already known."""
    statement = insert_for(conn)(application_entity).values(
        ae_title=ae.ae_title, host=ae.host, port=ae.port, created_at=datetime.now(UTC)
    )
    conn.execute(
        statement.on_conflict_do_update(
            index_elements=["ae_title"], set_={"host": ae.host, "port": ae.port}
        )
    )


def remove_ae(conn: Connection, ae_title: str) -> bool:
    """Forget *ae_title*; False when it was not known."""
    result = conn.execute(
        delete(application_entity).where(application_entity.c.ae_title == ae_title)
    )
    return bool(result.rowcount)


def find_ae(conn: Connection, ae_title: str) -> RegisteredAE | None:
    row = conn.execute(
        select(
            application_entity.c.ae_title, application_entity.c.host, application_entity.c.port
        ).where(application_entity.c.ae_title == ae_title)
    ).one_or_none()
    return None if row is None else RegisteredAE(*row)


def list_aes(conn: Connection) -> list[RegisteredAE]:
    rows = conn.execute(
        select(
            application_entity.c.ae_title, application_entity.c.host, application_entity.c.port
        ).order_by(application_entity.c.ae_title)
    )
    return [RegisteredAE(*row) for row in rows]
