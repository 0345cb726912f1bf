"""Who may associate with the archive, what each peer may ask of it, and which facilities.

At association request (EVT_REQUESTED) the called AE title and the calling AE title are
checked against the index:

- the called AE title must be the archive's own or a registered facility's (``pacs facility
  add NAME --ae-title AET``; read at each request, so a facility added while the server runs
  is answered at once), else the association is rejected (permanent, "called AE title not
  recognized", PS3.8 9.3.4). A registered peer whose entry names facilities may call only the
  archive's own title or the title of one of those facilities;
- a registered AE whose entry names an expected host must call from one of that host's
  addresses, else the association is rejected (permanent, "calling AE title not recognized",
  PS3.8 9.3.4: the standard has no reason for "wrong host", and naming it would help a
  spoofer);
- an unknown AE is rejected the same way unless ``PACS_DIMSE_ALLOW_UNKNOWN`` (development
  default), and then gets every permission but ``replace`` (DEFAULT_PERMISSIONS);
- an index that cannot be read rejects the association as transient (the peer may retry),
  unless unknown AEs are allowed and the archive's own title is called: then the peer is
  taken as unknown (any caller could be, by using a title nobody registered), and the
  services answer 0xA700 while the outage lasts.

The peer it resolved to is kept for the association's lifetime, with its facilities:

- the facility its C-STOREs belong to: the facility of the called AE title; for the archive's
  own title the single facility its registry entry names, else the default facility
  (``PACS_FACILITY``);
- the :class:`~pacs.facilities.Scope` its C-FIND, C-MOVE and C-GET see: the facilities its
  registry entry names, else (unnamed, or unknown peers) the facility of the called AE title
  (the default facility for the archive's own title). A study outside the scope does not
  match, so it is never "forbidden": its existence does not leak.

Each service handler asks :meth:`AccessPolicy.permitted` before it does anything: a refusal is
the DIMSE status 0x0124 "Refused: Not Authorized" (PS3.7 C.5.5) with an ErrorComment. C-MOVE
is the exception: a peer without the retrieve permission gets no C-MOVE presentation context
accepted, and a C-MOVE to a registered AE without the destination permission is "Move
Destination Unknown" (0xA801).
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pynetdicom import evt

from pacs.dimse.find import MOVE_MODELS
from pacs.errors import IndexUnavailable
from pacs.facilities import Scope, facility_of_ae_title
from pacs.index import Database
from pacs.index.ae_registry import DEFAULT_PERMISSIONS, AEPermission, RegisteredAE, find_ae

log = logging.getLogger(__name__)

# A-ASSOCIATE-RJ (result, source, reason), PS3.8 9.3.4.
REJECT_UNKNOWN_CALLING_AE = (0x01, 0x01, 0x03)  # rejected-permanent, service-user
REJECT_UNKNOWN_CALLED_AE = (0x01, 0x01, 0x07)  # rejected-permanent, service-user
REJECT_TRANSIENT = (0x02, 0x02, 0x01)  # rejected-transient, service-provider (ACSE)

#: (host) -> its addresses; ``socket.getaddrinfo`` by default, replaceable in tests.
Resolver = Callable[[str], set[str]]


def resolve(host: str) -> set[str]:
    """Every address *host* names (itself when it is an address)."""
    try:
        return {str(ipaddress.ip_address(host))}
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):  # unknown, or not a name at all (e.g. "a..b")
        return set()
    return {str(ipaddress.ip_address(info[4][0])) for info in infos}


@dataclass(frozen=True)
class Peer:
    """The calling AE of one association, what it may do, and for which facilities.

    Attributes
    ----------
    called_ae_title : str
        The AE title it called: the archive's own or a facility's (the Retrieve AE Title of
        its C-FIND matches, so that a C-MOVE goes where the C-FIND went).
    facility : str
        The facility its C-STOREs belong to.
    scope : Scope
        What its C-FIND, C-MOVE and C-GET see.
    """

    ae_title: str
    address: str
    permissions: frozenset[AEPermission]
    registered: bool
    called_ae_title: str
    facility: str
    scope: Scope


class AccessPolicy:
    """The association-time check and the per-service permissions (one per DIMSE server).

    Parameters
    ----------
    ae_title
        The archive's own AE title.
    default_facility
        The facility of the archive's own AE title (``PACS_FACILITY``).
    """

    def __init__(
        self,
        db: Database,
        allow_unknown: bool,
        ae_title: str = "PACS",
        default_facility: str = "default",
        resolver: Resolver = resolve,
    ) -> None:
        self.db = db
        self.allow_unknown = allow_unknown
        self.ae_title = ae_title
        self.default_facility = default_facility
        self.resolver = resolver
        self._peers: weakref.WeakKeyDictionary[Any, Peer] = weakref.WeakKeyDictionary()

    def on_requested(self, event: Any) -> None:
        """EVT_REQUESTED: reject the association, or remember who its peer is."""
        if event.assoc.is_rejected:  # an earlier check (the per-peer limit) already did
            return
        requestor = event.assoc.requestor
        # Before negotiation the requestor's ae_title is not set yet: read the A-ASSOCIATE-RQ.
        ae_title = str(requestor.primitive.calling_ae_title).strip()
        called = str(requestor.primitive.called_ae_title).strip()
        address = normalised(str(requestor.address))
        try:
            with self.db.read() as conn:
                entry = find_ae(conn, ae_title)
                titled = facility_of_ae_title(conn, called)
        except IndexUnavailable as exc:
            if self.allow_unknown and called == self.ae_title:
                # Any caller may take an unregistered title and get the default permissions,
                # so the outage grants nothing new; the services answer 0xA700 while it lasts.
                log.warning(
                    "association from %s (%s): registry unreadable: %s", ae_title, address, exc
                )
                self._peers[event.assoc] = self._peer(ae_title, address, called, None)
                return
            log.warning("association from %s (%s) rejected: %s", ae_title, address, exc)
            reject(event.assoc, REJECT_TRANSIENT)
            return
        if titled is None and called != self.ae_title:
            log.warning(
                "association from %s (%s) rejected: it called %r, not an AE title of ours",
                ae_title,
                address,
                called,
            )
            reject(event.assoc, REJECT_UNKNOWN_CALLED_AE)
            return
        if entry is None:
            if not self.allow_unknown:
                log.warning("association from unknown AE %r (%s) rejected", ae_title, address)
                reject(event.assoc, REJECT_UNKNOWN_CALLING_AE)
                return
            self._peers[event.assoc] = self._peer(ae_title, address, called, None, titled)
            return
        if entry.expected_host is not None and address not in {
            normalised(a) for a in self.resolver(entry.expected_host)
        }:
            log.warning(
                "association from %r rejected: it called from %s, its registry entry expects %s",
                ae_title,
                address,
                entry.expected_host,
            )
            reject(event.assoc, REJECT_UNKNOWN_CALLING_AE)
            return
        if titled is not None and entry.facilities and titled not in entry.facilities:
            log.warning(
                "association from %s (%s) rejected: it called %r of facility %s, "
                "its registry entry speaks for %s",
                ae_title,
                address,
                called,
                titled,
                ",".join(sorted(entry.facilities)),
            )
            reject(event.assoc, REJECT_UNKNOWN_CALLED_AE)
            return
        self._peers[event.assoc] = self._peer(ae_title, address, called, entry, titled)
        if AEPermission.RETRIEVE not in entry.permissions:
            _without_move(event.assoc)

    def _peer(
        self,
        ae_title: str,
        address: str,
        called: str,
        entry: RegisteredAE | None,
        titled: str | None = None,
    ) -> Peer:
        """The peer, with the facility it stores into and the scope it queries in; *titled*
        is the facility whose AE title it called (None: the archive's own title)."""
        named = entry.facilities if entry is not None else frozenset()
        if titled is not None:
            store_facility = titled
        elif len(named) == 1:
            [store_facility] = named
        else:
            store_facility = self.default_facility
        scope = Scope.of(named or [titled or self.default_facility])
        permissions = entry.permissions if entry is not None else DEFAULT_PERMISSIONS
        return Peer(
            ae_title, address, permissions, entry is not None, called, store_facility, scope
        )

    def peer(self, assoc: Any) -> Peer | None:
        return self._peers.get(assoc)

    def permitted(self, assoc: Any, permission: AEPermission) -> Peer | None:
        """The association's peer when it may use *permission*, else None (no peer: no)."""
        found = self._peers.get(assoc)
        if found is None or permission not in found.permissions:
            title = found.ae_title if found else str(assoc.requestor.ae_title).strip()
            log.warning("%s refused to %r: not permitted", permission.value, title)
            return None
        return found


def refusal(permission: AEPermission) -> str:
    """The ErrorComment of a 0x0124 answer (at most 64 characters, LO)."""
    return f"this AE is not permitted to {permission.value}"[:64]


def normalised(address: str) -> str:
    """An IPv4-mapped IPv6 address (``::ffff:127.0.0.1``) as the IPv4 address it maps."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    mapped = getattr(ip, "ipv4_mapped", None)
    return str(mapped or ip)


def _without_move(assoc: Any) -> None:
    """Accept no C-MOVE context on this association: pynetdicom's C-MOVE SCP cannot answer a
    refusal before it has associated with the destination, so the request never comes in
    (C-FIND and C-GET are answered 0x0124 instead)."""
    acceptor = assoc.acceptor
    acceptor.supported_contexts = [
        c for c in acceptor.supported_contexts if str(c.abstract_syntax) not in MOVE_MODELS
    ]


def reject(assoc: Any, reason: tuple[int, int, int]) -> None:
    """Send A-ASSOCIATE-RJ and end the association, as pynetdicom does for its own checks."""
    assoc.acse.send_reject(*reason)
    evt.trigger(assoc, evt.EVT_REJECTED, {})
    assoc.kill()
