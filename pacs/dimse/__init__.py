"""DIMSE networking: the archive's server (SCP) and the clients (SCU) of ``pacs send/echo``.

The names below load on first use (PEP 562): the SCU must not pay for the server's imports.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pacs.lazy import lazy_exports

if TYPE_CHECKING:
    from pacs.dimse.scu import Peer, SendReport, echo, send
    from pacs.dimse.server import Listener, build_ae, make_servers

__all__ = [
    "Listener",
    "Peer",
    "SendReport",
    "build_ae",
    "echo",
    "make_servers",
    "send",
]

_HOMES = {
    "Listener": "pacs.dimse.server",
    "Peer": "pacs.dimse.scu",
    "SendReport": "pacs.dimse.scu",
    "build_ae": "pacs.dimse.server",
    "echo": "pacs.dimse.scu",
    "make_servers": "pacs.dimse.server",
    "send": "pacs.dimse.scu",
}


__getattr__ = lazy_exports(__name__, _HOMES)
