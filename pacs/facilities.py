"""Facilities sharing one archive: the registry, and the scope a principal sees.

Each patient row (and so each study under it) belongs to one facility: the facility the first
instance was received for (the called AE title over DIMSE, the token's facility over STOW-RS;
AI results and signed reports join their study's facility). A principal (a token, a DIMSE
peer) has a :class:`Scope`: the facilities it speaks for, or every facility (a global admin).

A study is visible in a scope when its patient's facility is in the scope or when a live
sharing grant (:mod:`pacs.sharing`) gives it to one of the scope's facilities. Every read of
the index filters by it (:meth:`Scope.study_condition`), so a study of another facility is
"not found", never "forbidden": existence does not leak.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Connection,
    bindparam,
    exists,
    false,
    or_,
    select,
    true,
    update,
)

from pacs.errors import InvalidFacility
from pacs.index.records import ensure_facility
from pacs.index.schema import facility, patient, study, study_share
from pacs.uids import is_valid_ae_title

MAX_NAME = 64
#: The claim value (and CLI spelling) of "every facility".
EVERY_FACILITY = "*"
# The aliases the scope conditions use, made once: an alias builds its column collection when
# first used, which cost more than the rest of a one-instance query did per request.
_OWNER = patient.alias("scope_patient")
_OWNER_FACILITY = facility.alias("scope_facility")
_SHARED_STUDY = study.alias("scope_study")
_GRANT = study_share.alias("scope_share")
_GRANTEE = facility.alias("scope_grantee")
# Their column collections are built here, in one thread: SQLAlchemy memoizes each on first use
# without a lock, and a frame request once failed with "multiple FROMS" while several threads
# used the aliases for the first time (suspected, not reproduced).
for _alias in (_OWNER, _OWNER_FACILITY, _SHARED_STUDY, _GRANT, _GRANTEE):
    _alias.c.keys()


def check_name(name: str) -> str:
    """*name* if it can name a facility: 1-64 printable characters, no comma, not ``*``."""
    if (
        not name
        or len(name) > MAX_NAME
        or name != name.strip()
        or "," in name
        or name == EVERY_FACILITY
        or not name.isprintable()
    ):
        raise InvalidFacility(f"{name[:MAX_NAME]!r} is not a facility name")
    return name


@dataclass(frozen=True)
class Scope:
    """The facilities a principal speaks for; ``facilities=None``: every facility.

    Build with :meth:`of` or :meth:`everything`; an empty scope sees nothing.
    """

    facilities: frozenset[str] | None

    @classmethod
    def of(cls, names: Iterable[str]) -> Scope:
        return cls(frozenset(check_name(name) for name in names))

    @classmethod
    def everything(cls) -> Scope:
        return cls(None)

    @property
    def is_global(self) -> bool:
        return self.facilities is None

    def includes(self, name: str) -> bool:
        return self.facilities is None or name in self.facilities

    def describe(self) -> str:
        return "every facility" if self.facilities is None else ",".join(sorted(self.facilities))

    def study_condition(self, subject: object = study) -> ColumnElement[bool]:
        """The condition a row of *subject* (``study`` or an alias of it) meets when the
        study is visible: its patient's facility is in scope, or a live grant shares it."""
        if self.facilities is None:
            return true()
        if not self.facilities:
            return false()
        if subject is study:
            return _visible_in(tuple(sorted(self.facilities)))
        return _visible(subject, sorted(self.facilities), datetime.now(UTC))

    def parameters(self) -> dict[str, object]:
        """The values of :func:`bound_study_condition`'s parameters for this scope of named
        facilities (a global or empty scope needs no condition: true, false)."""
        assert self.facilities, "a scope of named facilities"
        return {"scope_names": sorted(self.facilities), "scope_now": datetime.now(UTC)}

    def patient_condition(self) -> ColumnElement[bool]:
        """The condition a ``patient`` row meets when visible: of a facility in scope, or
        with a study shared into the scope (PATIENT-level C-FIND)."""
        if self.facilities is None:
            return true()
        if not self.facilities:
            return false()
        names = sorted(self.facilities)
        own_facility = _OWNER_FACILITY
        owned = patient.c.facility_id.in_(
            select(own_facility.c.id).where(own_facility.c.name.in_(names))
        )
        shared_study = _SHARED_STUDY
        shared = exists(
            select(shared_study.c.id)
            .where(
                shared_study.c.patient_fk == patient.c.id,
                _shared(shared_study.c.id, shared_study, names, datetime.now(UTC)),
            )
            .correlate(patient)
        )
        return or_(owned, shared)


def bound_study_condition(subject: object = study) -> ColumnElement[bool]:
    """:meth:`Scope.study_condition` of a scope of named facilities, with the names and the
    time as bind parameters (``scope_names``, ``scope_now``; :meth:`Scope.parameters`): for
    statements built once, whose building costs more than their running per request."""
    return _visible(subject, bindparam("scope_names", expanding=True), bindparam("scope_now"))


@functools.lru_cache(maxsize=256)
def _visible_in(names: tuple[str, ...]) -> ColumnElement[bool]:
    """:func:`_visible` of a study row in the scope of *names*, built once per set of names:
    building it cost ~0.3 ms, more than a study search then took to run. The time it is
    compared at is taken when a statement holding it runs (a bind parameter's callable), not
    when it was built. Compiled once here, in the building thread, so that SQLAlchemy's
    memoized parts of it are made before other threads share it (see the aliases above)."""
    now: BindParameter[datetime] = bindparam("scope_now", callable_=_now, unique=True)
    condition = _visible(study, list(names), now)
    select(study.c.id).where(condition).compile()
    return condition


def _now() -> datetime:
    return datetime.now(UTC)


def _visible(subject: object, names: Any, now: Any) -> ColumnElement[bool]:
    """Visible in a scope of the facilities *names* at *now*: owned, or shared by a grant."""
    target = subject.c  # type: ignore[attr-defined]
    owner, owner_facility = _OWNER, _OWNER_FACILITY
    owned = exists(
        select(owner.c.id)
        .join(owner_facility, owner_facility.c.id == owner.c.facility_id)
        .where(owner.c.id == target.patient_fk, owner_facility.c.name.in_(names))
        .correlate(subject)  # type: ignore[arg-type]
    )
    return or_(owned, _shared(target.id, subject, names, now))


def _shared(study_id: object, subject: object, names: Any, now: Any) -> ColumnElement[bool]:
    grant, grantee = _GRANT, _GRANTEE
    return exists(
        select(grant.c.id)
        .join(grantee, grantee.c.id == grant.c.facility_id)
        .where(
            grant.c.study_fk == study_id,
            grantee.c.name.in_(names),
            grant.c.revoked_at.is_(None),
            or_(grant.c.until.is_(None), grant.c.until > now),
        )
        .correlate(subject)  # type: ignore[arg-type]
    )


def visible_study(conn: Connection, scope: Scope, StudyInstanceUID: str) -> int | None:
    """The row id of the study if it exists and *scope* sees it, else None."""
    found = conn.execute(
        select(study.c.id).where(
            study.c.study_instance_uid == StudyInstanceUID, scope.study_condition()
        )
    ).first()
    return None if found is None else int(found[0])


def study_facility(conn: Connection, StudyInstanceUID: str) -> str | None:
    """The facility a study belongs to, None when the index does not hold it."""
    found = conn.execute(_STUDY_FACILITY, {"study_uid": StudyInstanceUID}).first()
    return None if found is None else str(found[0])


# Built once: it runs for every stored instance (pacs.ingest).
_STUDY_FACILITY = (
    select(facility.c.name)
    .join(patient, patient.c.facility_id == facility.c.id)
    .join(study, study.c.patient_fk == patient.c.id)
    .where(study.c.study_instance_uid == bindparam("study_uid"))
)


@dataclass(frozen=True)
class Facility:
    """A registered facility and the called AE title its DIMSE instances arrive on."""

    name: str
    ae_title: str | None


def add_facility(conn: Connection, name: str, ae_title: str | None) -> Facility:
    """Register facility *name* (or set the AE title of a known one).

    Raises
    ------
    InvalidFacility
        A bad name or AE title, or an AE title another facility already has.
    """
    check_name(name)
    if ae_title is not None and not is_valid_ae_title(ae_title):
        raise InvalidFacility(f"{ae_title!r} is not a valid AE title")
    if ae_title is not None:
        holder = conn.execute(
            select(facility.c.name).where(facility.c.ae_title == ae_title)
        ).scalar_one_or_none()
        if holder is not None and holder != name:
            raise InvalidFacility(f"AE title {ae_title} already belongs to facility {holder}")
    facility_id = ensure_facility(conn, name, datetime.now(UTC))
    if ae_title is not None:
        conn.execute(update(facility).where(facility.c.id == facility_id).values(ae_title=ae_title))
    return Facility(name, facility_title(conn, name))


def facility_title(conn: Connection, name: str) -> str | None:
    return conn.execute(
        select(facility.c.ae_title).where(facility.c.name == name)
    ).scalar_one_or_none()


def list_facilities(conn: Connection) -> list[Facility]:
    rows = conn.execute(select(facility.c.name, facility.c.ae_title).order_by(facility.c.name))
    return [Facility(str(name), title) for name, title in rows]


def facility_names(conn: Connection) -> frozenset[str]:
    return frozenset(str(n) for n in conn.execute(select(facility.c.name)).scalars())


def facility_of_ae_title(conn: Connection, ae_title: str) -> str | None:
    """The facility whose AE title is *ae_title*, None when no facility has it."""
    found = conn.execute(
        select(facility.c.name).where(facility.c.ae_title == ae_title)
    ).scalar_one_or_none()
    return None if found is None else str(found)


def facility_ae_titles(conn: Connection) -> frozenset[str]:
    """Every AE title a facility has: the titles the DIMSE server answers to, besides its own."""
    rows = conn.execute(select(facility.c.ae_title).where(facility.c.ae_title.is_not(None)))
    return frozenset(str(title) for title in rows.scalars())
