"""The registry of known DICOM peers (``pacs ae add``): where C-MOVE sends instances, what
each peer may ask of the archive, the host it must call from, and the facilities it speaks
for."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import Connection, delete, select

from pacs.errors import InvalidAE, InvalidFacility
from pacs.facilities import check_name
from pacs.index.records import insert_for
from pacs.index.schema import application_entity
from pacs.uids import is_valid_ae_title


class AEPermission(enum.StrEnum):
    """What a registered peer may do (dcm4chee's AE "roles", as DIMSE services)."""

    STORE = "store"  # C-STORE to the archive
    FIND = "find"  # C-FIND
    RETRIEVE = "retrieve"  # C-MOVE and C-GET requests
    DESTINATION = "destination"  # receive the instances of a C-MOVE
    # C-STORE new bytes for a stored SOP Instance UID (the old version is kept) and correct a
    # stored patient's name, birth date or sex or a study's accession number.
    REPLACE = "replace"


ALL_PERMISSIONS = frozenset(AEPermission)
#: What a new registry entry (``pacs ae add`` without --permit) and, where they are allowed,
#: an unknown AE get: everything but replace. The column default (migration 0011) says the same.
DEFAULT_PERMISSIONS = ALL_PERMISSIONS - {AEPermission.REPLACE}


def parse_permissions(text: str) -> frozenset[AEPermission]:
    """``store,find`` as permissions; ``all`` for every one. Raises InvalidAE on a name we do
    not know (a typo must not silently grant or deny)."""
    names = [name.strip().lower() for name in text.split(",") if name.strip()]
    if names == ["all"]:
        return ALL_PERMISSIONS
    known = {p.value for p in AEPermission}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise InvalidAE(
            f"unknown permission(s) {', '.join(unknown)}: use {', '.join(sorted(known))} or all"
        )
    return frozenset(AEPermission(name) for name in names)


def format_permissions(permissions: frozenset[AEPermission]) -> str:
    return ",".join(p.value for p in AEPermission if p in permissions)


@dataclass(frozen=True)
class RegisteredAE:
    """A known application entity: its AE title, where it listens, what it may do, the host
    it must call from (None: any host), whether it is reached over TLS, and the facilities
    it speaks for (empty: the facility of the AE title it calls, ``pacs.dimse.access``)."""

    ae_title: str
    host: str
    port: int
    permissions: frozenset[AEPermission] = field(default=DEFAULT_PERMISSIONS)
    expected_host: str | None = None
    tls: bool = False
    facilities: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if not is_valid_ae_title(self.ae_title):
            raise InvalidAE(f"{self.ae_title!r} is not a valid AE title")
        for host in (self.host, self.expected_host):
            if host is not None and (not host or any(c.isspace() for c in host)):
                raise InvalidAE(f"{host!r} is not a host name or address")
        if not 0 < self.port < 65536:
            raise InvalidAE(f"port {self.port} is out of range")
        for name in self.facilities:
            try:
                check_name(name)
            except InvalidFacility as exc:
                raise InvalidAE(str(exc)) from exc

    def may(self, permission: AEPermission) -> bool:
        return permission in self.permissions


def add_ae(conn: Connection, ae: RegisteredAE) -> None:
    """Register *ae*, or update everything but the title of an AE title already known."""
    values = {
        "host": ae.host,
        "port": ae.port,
        "permissions": format_permissions(ae.permissions),
        "expected_host": ae.expected_host,
        "tls": ae.tls,
        "facilities": format_facilities(ae.facilities),
    }
    statement = insert_for(conn)(application_entity).values(
        ae_title=ae.ae_title, created_at=datetime.now(UTC), **values
    )
    conn.execute(statement.on_conflict_do_update(index_elements=["ae_title"], set_=values))


def remove_ae(conn: Connection, ae_title: str) -> bool:
    """Forget *ae_title*; False when it was not known."""
    result = conn.execute(
        delete(application_entity).where(application_entity.c.ae_title == ae_title)
    )
    return bool(result.rowcount)


_COLUMNS = (
    application_entity.c.ae_title,
    application_entity.c.host,
    application_entity.c.port,
    application_entity.c.permissions,
    application_entity.c.expected_host,
    application_entity.c.tls,
    application_entity.c.facilities,
)


def format_facilities(names: frozenset[str]) -> str | None:
    """The ``facilities`` column: names comma-separated (they hold no comma), NULL for none."""
    return ",".join(sorted(names)) or None


def _entry(row: tuple[str, str, int, str, str | None, bool, str | None]) -> RegisteredAE:
    ae_title, host, port, permissions, expected_host, tls, facilities = row
    names = frozenset(name for name in (facilities or "").split(",") if name)
    return RegisteredAE(
        ae_title, host, port, parse_permissions(permissions), expected_host, bool(tls), names
    )


def find_ae(conn: Connection, ae_title: str) -> RegisteredAE | None:
    row = conn.execute(
        select(*_COLUMNS).where(application_entity.c.ae_title == ae_title)
    ).one_or_none()
    return None if row is None else _entry(row.tuple())


def list_aes(conn: Connection) -> list[RegisteredAE]:
    rows = conn.execute(select(*_COLUMNS).order_by(application_entity.c.ae_title))
    return [_entry(row.tuple()) for row in rows]
