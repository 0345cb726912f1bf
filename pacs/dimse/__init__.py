"""DIMSE networking: the archive's server (SCP) and the clients (SCU) of ``pacs send/echo``."""

from pacs.dimse.scu import Peer, SendReport, echo, send
from pacs.dimse.server import build_ae, make_server

__all__ = ["Peer", "SendReport", "build_ae", "echo", "make_server", "send"]
