"""DIMSE networking: the archive's server (SCP) and the clients (SCU) of ``pacs send/echo``."""

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
