"""Egress policy: which addresses the archive may send HTTP requests to (webhooks).

A webhook URL is typed by an administrator, but an account taken over, a careless paste or a
DNS record changed later must not turn the archive into a proxy onto the cloud metadata
service (instance credentials), link-local devices, or its own DICOM and HTTP ports on
loopback (server-side request forgery). So a URL is checked twice: when it is subscribed
(:meth:`EgressPolicy.check`, a clear refusal), and again before every delivery, where the host
is resolved anew, every address it resolves to must be allowed, and the request goes to the
address that was checked (:meth:`Destination.request_target`), not to a second lookup.

Rules, in order:

1. Never: cloud metadata addresses, link-local, multicast, unspecified ("this host"),
   reserved/broadcast; IPv4-mapped and NAT64 IPv6 forms are judged by their IPv4 address.
2. Never: this archive's own ports (DICOM, HTTP) on loopback or on its configured host address.
3. With an allow-list (``PACS_WEBHOOK_ALLOW``: host names and/or networks): only a listed host
   name, or an address inside a listed network.
4. Without one: public and private (RFC 1918, unique local) addresses; not loopback, not other
   special-purpose ranges (shared address space, documentation, benchmarking).
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from pacs.errors import EgressRefused

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
# (host, port) -> the addresses it resolves to; raises EgressRefused when it does not resolve.
Resolver = Callable[[str, int], Sequence[IPAddress]]


def _nets(*cidrs: str) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(cidr) for cidr in cidrs)


# Instance metadata services: AWS/GCP/Azure/Oracle (169.254.169.254, in link-local anyway),
# AWS over IPv6, GCP over IPv6, Alibaba (in the shared address space), Azure's wire server
# (a public address that only answers from inside Azure).
METADATA = _nets(
    "169.254.169.254/32", "fd00:ec2::254/128", "fd20:ce::254/128", "100.100.100.200/32",
    "168.63.129.16/32",
)  # fmt: skip
NEVER: tuple[tuple[str, tuple[Network, ...]], ...] = (
    ("a cloud metadata address", METADATA),
    ("link-local", _nets("169.254.0.0/16", "fe80::/10")),
    ("multicast", _nets("224.0.0.0/4", "ff00::/8")),
    ("unspecified (this host)", _nets("0.0.0.0/8", "::/128")),
    ("reserved or broadcast", _nets("240.0.0.0/4")),
)
LOOPBACK = _nets("127.0.0.0/8", "::1/128")
PRIVATE = _nets("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052: the last 32 bits are an IPv4 address
IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")  # RFC 4291 2.5.5.1, deprecated

# A host name as an allow-list entry: LDH labels, dot-separated (RFC 1123), at most 253 long.
_HOST_NAME = re.compile(r"(?=.{1,253}\Z)(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.?)+", re.I)
_SCHEMES = {"http": 80, "https": 443}


def system_resolver(host: str, port: int) -> list[IPAddress]:
    """The addresses ``getaddrinfo`` gives for *host* (what a connection would use)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise EgressRefused(f"{host} does not resolve ({exc})") from exc
    found: list[IPAddress] = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]))
        if address not in found:
            found.append(address)
    return found


def _judged(address: IPAddress) -> IPAddress:
    """The IPv4 address inside an IPv4-mapped, NAT64, IPv4-compatible (deprecated, ``::a.b.c.d``
    but not ``::`` or ``::1``), 6to4 or Teredo IPv6 address: where it really goes (is_global
    would take ``::7f00:1`` for public)."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address in NAT64 or (address in IPV4_COMPATIBLE and int(address) > 1):
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if address.sixtofour is not None:
            return address.sixtofour
        if address.teredo is not None:
            return address.teredo[1]  # (server, client): the client is where it goes
    return address


def _within(address: IPAddress, networks: Iterable[Network]) -> bool:
    return any(address.version == net.version and address in net for net in networks)


def _subnet(network: Network, of: Network) -> bool:
    if isinstance(network, ipaddress.IPv4Network) and isinstance(of, ipaddress.IPv4Network):
        return network.subnet_of(of)
    if isinstance(network, ipaddress.IPv6Network) and isinstance(of, ipaddress.IPv6Network):
        return network.subnet_of(of)
    return False


def _never(address: IPAddress) -> str | None:
    for reason, networks in NEVER:
        if _within(address, networks):
            return reason
    return None


@dataclass(frozen=True)
class Destination:
    """A URL that passed the policy, with the addresses its host resolved to then."""

    url: httpx.URL
    host: str
    port: int
    addresses: tuple[IPAddress, ...]

    def request_target(self) -> tuple[httpx.URL, dict[str, str], dict[str, Any]]:
        """URL, headers and httpx extensions that send a request to the checked address.

        The URL names the address itself, so no second lookup can return another one; the
        ``Host`` header keeps the name for the receiver, and for HTTPS the name is the TLS
        server name the certificate is verified against (httpcore's ``sni_hostname``).
        """
        address = self.addresses[0]
        url = self.url.copy_with(host=str(address))
        headers = {"Host": self.url.netloc.decode("ascii")}
        named = self.host != str(address)
        extensions = {"sni_hostname": self.host} if self.url.scheme == "https" and named else {}
        return url, headers, extensions


@dataclass(frozen=True)
class EgressPolicy:
    """Where outgoing requests may go (see the module docstring for the rules).

    Parameters
    ----------
    allow_hosts : frozenset of str
        Host names allowed whatever they resolve to (but never to rule 1 and 2 addresses).
    allow_networks : tuple of networks
        Allowed networks. With either allow-list set, nothing else is allowed.
    own_ports : frozenset of int
        This archive's listening ports, refused on loopback and *own_addresses*.
    own_addresses : frozenset of addresses
        The address the archive listens on, when it is not loopback or unspecified.
    resolver : Resolver
        Host name lookup (injected by tests).
    """

    allow_hosts: frozenset[str] = frozenset()
    allow_networks: tuple[Network, ...] = ()
    own_ports: frozenset[int] = frozenset()
    own_addresses: frozenset[IPAddress] = frozenset()
    resolver: Resolver = field(default=system_resolver, compare=False)

    def __post_init__(self) -> None:
        for name in self.allow_hosts:
            if name != name.lower().rstrip(".") or not _HOST_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not a lower-case host name")

    @classmethod
    def parse(
        cls,
        allow: Iterable[str],
        own_ports: Iterable[int] = (),
        own_host: str | None = None,
        resolver: Resolver = system_resolver,
    ) -> EgressPolicy:
        """A policy from allow-list entries (``host.example``, ``10.1.2.3``, ``10.0.0.0/8``).

        Raises
        ------
        ValueError
            An entry that is neither a host name nor a network, or one wholly inside a range
            that is never allowed (saying so at start-up beats a silent refusal later).
        """
        hosts: set[str] = set()
        networks: list[Network] = []
        for entry in (e.strip() for e in allow):
            try:
                network = ipaddress.ip_network(entry)
            except ValueError as exc:
                if ":" in entry or "/" in entry or not _HOST_NAME.fullmatch(entry):
                    raise ValueError(
                        f"{entry!r} is neither a host name nor an address or network: {exc}"
                    ) from None
                hosts.add(entry.lower().rstrip("."))
                continue
            for reason, never in NEVER:
                if any(_subnet(network, n) for n in never):
                    raise ValueError(f"{entry} is {reason}: never allowed")
            networks.append(network)
        own: set[IPAddress] = set()
        if own_host is not None:
            try:
                address = ipaddress.ip_address(own_host)
            except ValueError:
                pass  # a host name: its loopback form is covered by LOOPBACK
            else:
                if not address.is_unspecified:
                    own.add(address)
        return cls(
            frozenset(hosts), tuple(networks), frozenset(own_ports), frozenset(own), resolver
        )

    def parse_url(self, url: str) -> tuple[httpx.URL, str, int]:
        """The URL, its host and port, if its form is acceptable (nothing is resolved).

        Raises
        ------
        EgressRefused
            Not http(s), whitespace/control characters/backslash (header injection and
            parser confusion), credentials in the URL, no host, or a port out of range.
        """
        if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F or ch == "\\" for ch in url):
            raise EgressRefused("the URL contains whitespace, a control character or a backslash")
        try:
            parsed = httpx.URL(url)
        except httpx.InvalidURL as exc:
            raise EgressRefused(f"{url!r} is not a valid URL: {exc}") from exc
        if parsed.scheme not in _SCHEMES or not url.lower().startswith(parsed.scheme + "://"):
            raise EgressRefused(f"{url!r} is not an http(s) URL")
        if parsed.userinfo:
            raise EgressRefused(
                "credentials in the URL (user:password@) are not allowed: "
                "receivers authenticate deliveries by their signature"
            )
        host = parsed.raw_host.decode("ascii").lower()
        if not host:
            raise EgressRefused(f"{url!r} names no host")
        port = _SCHEMES[parsed.scheme] if parsed.port is None else parsed.port
        if not 0 < port < 65536:
            raise EgressRefused(f"port {port} is out of range")
        return parsed, host, port

    def refusal(self, address: IPAddress, port: int, host_listed: bool = False) -> str | None:
        """Why *address*:*port* is not allowed (``"is link-local: never allowed"``), or None."""
        judged = _judged(address)
        via = "" if judged == address else f"(that is {judged}) "
        reason = _never(judged)
        if reason is not None:
            return f"{via}is {reason}: never allowed"
        if port in self.own_ports and (_within(judged, LOOPBACK) or judged in self.own_addresses):
            return f"{via}is where this archive's own port {port} listens: never allowed"
        if host_listed or _within(judged, self.allow_networks):
            return None
        if self.allow_hosts or self.allow_networks:
            return f"{via}is not in PACS_WEBHOOK_ALLOW"
        if _within(judged, LOOPBACK):
            return f"{via}is loopback: allowed only when PACS_WEBHOOK_ALLOW lists it"
        if _within(judged, PRIVATE) or judged.is_global:
            return None
        return f"{via}is a special-purpose address (neither public nor private)"

    def check(self, url: str) -> Destination:
        """Check *url* and every address its host resolves to now.

        Raises
        ------
        EgressRefused
            The URL's form (see :meth:`parse_url`), a host that does not resolve, or an
            address the policy refuses; the message says which and why.
        """
        parsed, host, port = self.parse_url(url)
        try:
            addresses: Sequence[IPAddress] = [ipaddress.ip_address(host)]
            subject = "{address} "
        except ValueError:
            addresses = self.resolver(host, port)
            if not addresses:
                raise EgressRefused(f"{host} resolves to no address") from None
            subject = host + " resolves to {address}, which "
        listed = host.rstrip(".") in self.allow_hosts
        for address in addresses:
            reason = self.refusal(address, port, listed)
            if reason is not None:
                raise EgressRefused(subject.format(address=address) + reason)
        return Destination(parsed, host, port, tuple(addresses))
