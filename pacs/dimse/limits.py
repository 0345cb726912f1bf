"""Per-peer association limits, and a short timeout before an association's first P-DATA.

Without them one peer that opens associations and sends nothing holds every one of the
server's ``PACS_MAX_ASSOCIATIONS`` slots for the network timeout, and no modality gets in.

- **Per peer**: at association request (EVT_REQUESTED) a peer that already has
  ``PACS_MAX_ASSOCIATIONS_PER_PEER`` associations open (or being negotiated) is
  rejected-transient, "local limit exceeded" (PS3.8 9.3.4: result 2, source 3, reason 2); it
  may retry once one of its own associations ends. A peer is counted by its **address**, not
  its calling AE title: the title is whatever the caller writes in its request, so counting by
  title would let anyone lock a modality out by opening idle associations under its title,
  while the address is where the TCP connection really comes from. Several AEs on one host
  (or behind one NAT or TCP proxy) share its limit: raise it for such a host. A connection
  counts from its A-ASSOCIATE-RQ: one that has not sent it yet (a port probe) does not.
- **Idle**: from the A-ASSOCIATE-RQ until the first P-DATA-TF the association's network
  timeout is ``PACS_ASSOCIATION_IDLE_TIMEOUT``; then the server's ``PACS_NETWORK_TIMEOUT``
  applies again. An association that sends nothing is aborted (A-ABORT) after the short
  timeout and its slot is free. The same short timeout bounds how long a new connection may
  wait before it sends its A-ASSOCIATE-RQ (pynetdicom's ACSE timeout).

Counts are per receiver process (``PACS_RECEIVERS`` processes each have their own).
"""

from __future__ import annotations

import logging
from typing import Any

from pynetdicom.pdu import P_DATA_TF

from pacs.dimse.access import normalised, reject

log = logging.getLogger(__name__)

# A-ASSOCIATE-RJ rejected-transient, service-provider (presentation), local-limit-exceeded.
REJECT_LOCAL_LIMIT = (0x02, 0x03, 0x02)


class AssociationLimits:
    """The per-peer limit and the idle timeout of one DIMSE server (its handlers)."""

    def __init__(self, per_peer: int, idle_timeout: float) -> None:
        self.per_peer = per_peer
        self.idle_timeout = idle_timeout

    def on_requested(self, event: Any) -> None:
        """EVT_REQUESTED (bound first): reject a peer over its limit, else shorten the
        association's network timeout until its first P-DATA."""
        assoc = event.assoc
        address = normalised(str(assoc.requestor.address))
        open_here = [
            other
            for other in assoc.ae.active_associations
            if other is not assoc
            and other.is_acceptor
            # Counted from its A-ASSOCIATE-RQ: a connection that never asked (a port probe)
            # is not, and is closed after the idle timeout anyway; nor is one rejected.
            and other.requestor.primitive is not None
            and not other.is_rejected
            and normalised(str(other.requestor.address)) == address
        ]
        if len(open_here) >= self.per_peer:
            title = str(assoc.requestor.primitive.calling_ae_title).strip()
            log.warning(
                "association from %s (%s) rejected: %d open from that address "
                "(PACS_MAX_ASSOCIATIONS_PER_PEER)",
                title,
                address,
                len(open_here),
            )
            reject(assoc, REJECT_LOCAL_LIMIT)
            return
        if assoc.network_timeout is None or self.idle_timeout < assoc.network_timeout:
            assoc.network_timeout = self.idle_timeout

    def on_pdu_received(self, event: Any) -> None:
        """EVT_PDU_RECV: the first P-DATA-TF restores the server's network timeout."""
        if isinstance(event.pdu, P_DATA_TF):
            restore_network_timeout(event.assoc)


def restore_network_timeout(assoc: Any) -> None:
    """A P-DATA-TF arrived on *assoc*: the server's network timeout applies again."""
    if assoc.network_timeout != assoc.ae.network_timeout:
        assoc.network_timeout = assoc.ae.network_timeout
