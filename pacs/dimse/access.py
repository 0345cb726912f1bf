"""Who may associate with the archive, and what each peer may ask of it.

At association request (EVT_REQUESTED) the calling AE title is looked up in the AE registry:

- a registered AE whose entry names an expected host must call from one of that host's
  addresses, else the association is rejected (permanent, "calling AE title not recognized",
  PS3.8 9.3.4: the standard has no reason for "wrong host", and naming it would help a
  spoofer);
- an unknown AE is rejected the same way unless ``PACS_DIMSE_ALLOW_UNKNOWN`` (development
  default), and then gets every permission, as before access control existed;
- an index that cannot be read rejects the association as transient (the peer may retry),
  unless unknown AEs are allowed: then the peer is taken as unknown (any caller could be, by
  using a title nobody registered), and the services answer 0xA700 while the outage lasts.

The peer it resolved to is kept for the association's lifetime, and each service handler asks
:meth:`AccessPolicy.permits` before it does anything: a refusal is the DIMSE status 0x0124
"Refused: Not Authorized" (PS3.7 C.5.5) with an ErrorComment. C-MOVE is the exception: a peer
without the retrieve permission gets no C-MOVE presentation context accepted, and a C-MOVE to
a registered AE without the destination permission is "Move Destination Unknown" (0xA801).
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
from pacs.index import Database
from pacs.index.ae_registry import ALL_PERMISSIONS, AEPermission, find_ae

log = logging.getLogger(__name__)

# A-ASSOCIATE-RJ (result, source, reason), PS3.8 9.3.4.
REJECT_UNKNOWN_CALLING_AE = (0x01, 0x01, 0x03)  # rejected-permanent, service-user
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
    """The calling AE of one association and what it may do."""

    ae_title: str
    address: str
    permissions: frozenset[AEPermission]
    registered: bool


class AccessPolicy:
    """The association-time check and the per-service permissions (one per DIMSE server)."""

    def __init__(self, db: Database, allow_unknown: bool, resolver: Resolver = resolve) -> None:
        self.db = db
        self.allow_unknown = allow_unknown
        self.resolver = resolver
        self._peers: weakref.WeakKeyDictionary[Any, Peer] = weakref.WeakKeyDictionary()

    def on_requested(self, event: Any) -> None:
        """EVT_REQUESTED: reject the association, or remember who its peer is."""
        requestor = event.assoc.requestor
        # Before negotiation the requestor's ae_title is not set yet: read the A-ASSOCIATE-RQ.
        ae_title = str(requestor.primitive.calling_ae_title).strip()
        address = _normalised(str(requestor.address))
        try:
            with self.db.read() as conn:
                entry = find_ae(conn, ae_title)
        except IndexUnavailable as exc:
            if self.allow_unknown:
                # Any caller may take an unregistered title and get every permission, so the
                # outage grants nothing new; the services answer 0xA700 while it lasts.
                log.warning(
                    "association from %s (%s): registry unreadable: %s", ae_title, address, exc
                )
                self._peers[event.assoc] = Peer(ae_title, address, ALL_PERMISSIONS, False)
                return
            log.warning("association from %s (%s) rejected: %s", ae_title, address, exc)
            _reject(event.assoc, REJECT_TRANSIENT)
            return
        if entry is None:
            if not self.allow_unknown:
                log.warning("association from unknown AE %r (%s) rejected", ae_title, address)
                _reject(event.assoc, REJECT_UNKNOWN_CALLING_AE)
                return
            self._peers[event.assoc] = Peer(ae_title, address, ALL_PERMISSIONS, False)
            return
        if entry.expected_host is not None and address not in {
            _normalised(a) for a in self.resolver(entry.expected_host)
        }:
            log.warning(
                "association from %r rejected: it called from %s, its registry entry expects %s",
                ae_title,
                address,
                entry.expected_host,
            )
            _reject(event.assoc, REJECT_UNKNOWN_CALLING_AE)
            return
        self._peers[event.assoc] = Peer(ae_title, address, entry.permissions, True)
        if AEPermission.RETRIEVE not in entry.permissions:
            _without_move(event.assoc)

    def peer(self, assoc: Any) -> Peer | None:
        return self._peers.get(assoc)

    def permits(self, assoc: Any, permission: AEPermission) -> bool:
        """Whether the association's peer may use *permission* (no peer: no)."""
        found = self._peers.get(assoc)
        allowed = found is not None and permission in found.permissions
        if not allowed:
            title = found.ae_title if found else str(assoc.requestor.ae_title).strip()
            log.warning("%s refused to %r: not permitted", permission.value, title)
        return allowed


def refusal(permission: AEPermission) -> str:
    """The ErrorComment of a 0x0124 answer (at most 64 characters, LO)."""
    return f"this AE is not permitted to {permission.value}"[:64]


def _normalised(address: str) -> str:
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


def _reject(assoc: Any, reason: tuple[int, int, int]) -> None:
    """Send A-ASSOCIATE-RJ and end the association, as pynetdicom does for its own checks."""
    assoc.acse.send_reject(*reason)
    evt.trigger(assoc, evt.EVT_REJECTED, {})
    assoc.kill()
