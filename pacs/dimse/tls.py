"""TLS for DIMSE (PS3.15 Annex B.1, the Basic TLS Secure Transport Connection Profile): the
server context of the TLS listener, and the client context of C-MOVE sub-associations to
destinations registered with ``--tls``.

TLS 1.2 is the oldest version either side speaks (BCP 195, which PS3.15 B.9 adopts).
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path

from pacs.errors import TLSConfigError

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2


def _load(what: str, path: Path, load: Callable[..., object], *args: Path) -> None:
    """Call *load* and say which file failed and why (ssl's own message names neither)."""
    try:
        load(*args)
    except (OSError, ssl.SSLError) as exc:
        raise TLSConfigError(f"cannot load the TLS {what} {path}: {exc}") from exc


def server_context(
    cert: Path, key: Path, ca: Path | None = None, require_client_cert: bool = False
) -> ssl.SSLContext:
    """The context wrapping every connection accepted on the TLS port.

    Parameters
    ----------
    cert, key
        Our certificate (chain, PEM) and its private key.
    ca
        The CA bundle client certificates are verified against.
    require_client_cert
        Refuse a client without a certificate issued by *ca* (mutual TLS); otherwise no
        client certificate is asked for: the AE registry decides who may do what.

    Raises
    ------
    TLSConfigError
        A file is missing or not a certificate/key; *require_client_cert* without *ca*.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = MINIMUM_VERSION
    _load("certificate or key", cert, context.load_cert_chain, cert, key)
    if require_client_cert:
        if ca is None:
            raise TLSConfigError("client certificates can be required only with a CA bundle")
        _load("CA bundle", ca, context.load_verify_locations, ca)
        context.verify_mode = ssl.CERT_REQUIRED
    else:
        context.verify_mode = ssl.CERT_NONE
    return context


def client_context(
    ca: Path | None = None, cert: Path | None = None, key: Path | None = None
) -> ssl.SSLContext:
    """The context of our C-MOVE sub-associations to TLS destinations: the destination's
    certificate must be issued by *ca* (the system's CAs when None) for the host it is
    registered with; *cert* and *key*, when given, are our client certificate.

    Raises
    ------
    TLSConfigError
        A file is missing or not a certificate/key.
    """
    # PROTOCOL_TLS_CLIENT: the peer's certificate is verified, and its host name checked.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = MINIMUM_VERSION
    if ca is None:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    else:  # only our CA, not the system's: a public CA must not vouch for a modality
        _load("CA bundle", ca, context.load_verify_locations, ca)
    if cert is not None and key is not None:
        _load("certificate or key", cert, context.load_cert_chain, cert, key)
    return context
