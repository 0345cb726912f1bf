"""The egress policy's rules, with an injected resolver where DNS answers matter."""

from __future__ import annotations

import ipaddress

import pytest

from pacs.egress import EgressPolicy, IPAddress, system_resolver
from pacs.errors import EgressRefused
from pacs.settings import PacsSettings

DNS = {
    "hooks.example.org": ["93.184.215.14"],
    "lab.hospital.internal": ["10.20.0.5", "fd12::5"],
    "metadata.example.org": ["169.254.169.254"],
    "rebound.example.org": ["93.184.215.14", "127.0.0.1"],  # one bad answer of two
    "empty.example.org": [],
}


def resolver(host: str, port: int) -> list[IPAddress]:
    if host not in DNS:
        raise EgressRefused(f"{host} does not resolve")
    return [ipaddress.ip_address(a) for a in DNS[host]]


DEFAULT = EgressPolicy.parse([], own_ports=(11112, 8000), own_host="10.20.0.1", resolver=resolver)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://metadata.example.org/", "resolves to 169.254.169.254, which is a cloud metadata"),
        ("http://rebound.example.org/", "resolves to 127.0.0.1, which is loopback"),
        ("http://empty.example.org/", "empty.example.org resolves to no address"),
        ("http://nowhere.example.org/", "nowhere.example.org does not resolve"),
        ("http://100.100.100.200/", "100.100.100.200 is a cloud metadata address"),
        ("http://[fd20:ce::254]/", "fd20:ce::254 is a cloud metadata address"),
        ("http://[64:ff9b::a9fe:a9fe]/", "(that is 169.254.169.254) is a cloud metadata"),
        ("http://[ff02::1]/", "ff02::1 is multicast"),
        ("http://[::a9fe:a9fe]/", "(that is 169.254.169.254) is a cloud metadata"),
        ("http://[::7f00:1]/", "(that is 127.0.0.1) is loopback"),
        ("http://[2002:a9fe:a9fe::]/", "(that is 169.254.169.254) is a cloud metadata"),
        ("http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/", "(that is 127.0.0.1) is loopback"),
        ("http://240.0.0.1/", "240.0.0.1 is reserved or broadcast"),
        ("http://192.0.2.7/", "192.0.2.7 is a special-purpose address"),
        ("http://10.20.0.1:8000/", "where this archive's own port 8000 listens"),
        ("http://127.0.0.2:11112/", "where this archive's own port 11112 listens"),
        ("http://user@10.1.2.3/", "credentials in the URL"),
        ("http://10.1.2.3/\t", "whitespace, a control character"),
        ("http://10.1.2.3/\x00", "whitespace, a control character"),
        ("http://:80/", "names no host"),
        ("http:/10.1.2.3/", "is not an http(s) URL"),
    ],
)
def test_refused(url: str, reason: str) -> None:
    with pytest.raises(EgressRefused) as refused:
        DEFAULT.check(url)
    assert reason in str(refused.value)


def test_public_and_private_destinations_go_to_the_address_checked() -> None:
    assert DEFAULT.check("http://10.20.0.1:9000/").addresses == (ipaddress.ip_address("10.20.0.1"),)
    destination = DEFAULT.check("https://hooks.example.org/pacs?x=1")
    url, headers, extensions = destination.request_target()
    assert str(url) == "https://93.184.215.14/pacs?x=1"
    assert headers == {"Host": "hooks.example.org"}
    # TLS: the certificate is verified against the name, not the address.
    assert extensions == {"sni_hostname": "hooks.example.org"}
    both = DEFAULT.check("http://lab.hospital.internal:8080/hook")
    assert [str(a) for a in both.addresses] == ["10.20.0.5", "fd12::5"]
    assert both.request_target()[1] == {"Host": "lab.hospital.internal:8080"}
    ipv6 = DEFAULT.check("https://[fd12::5]:8443/").request_target()
    assert (str(ipv6[0]), ipv6[2]) == ("https://[fd12::5]:8443/", {})


def test_an_allow_list_admits_only_what_it_lists() -> None:
    policy = EgressPolicy.parse(
        ["LAB.hospital.internal.", "127.0.0.1", "192.168.7.0/24"],
        own_ports=(8000,),
        resolver=resolver,
    )
    assert policy.allow_hosts == frozenset({"lab.hospital.internal"})
    policy.check("http://lab.hospital.internal/")
    policy.check("http://127.0.0.1:9/")
    policy.check("http://192.168.7.200/")
    for url, reason in [
        ("http://hooks.example.org/", "93.184.215.14, which is not in PACS_WEBHOOK_ALLOW"),
        ("http://192.168.8.1/", "192.168.8.1 is not in PACS_WEBHOOK_ALLOW"),
        ("http://127.0.0.1:8000/", "own port 8000"),  # listed, but never our own ports
    ]:
        with pytest.raises(EgressRefused, match=reason):
            policy.check(url)


def test_a_listed_name_never_reaches_a_forbidden_address() -> None:
    policy = EgressPolicy.parse(["metadata.example.org"], resolver=resolver)
    with pytest.raises(EgressRefused, match="cloud metadata address: never allowed"):
        policy.check("http://metadata.example.org/")


def test_the_system_resolver_resolves_localhost_to_loopback() -> None:
    assert all(a.is_loopback for a in system_resolver("localhost", 80))
    with pytest.raises(EgressRefused, match="does not resolve"):
        system_resolver("no-such-host.invalid", 80)


@pytest.mark.parametrize(
    ("allow", "reason"),
    [
        ('["169.254.0.0/16"]', "169.254.0.0/16 is link-local: never allowed"),
        ('["fd00:ec2::254"]', "is a cloud metadata address: never allowed"),
        ('["10.0.0.1/8"]', "has host bits set"),
        ('["not a host"]', "neither a host name nor an address or network"),
    ],
)
def test_settings_refuse_a_bad_allow_list(
    monkeypatch: pytest.MonkeyPatch, allow: str, reason: str
) -> None:
    monkeypatch.setenv("PACS_WEBHOOK_ALLOW", allow)
    with pytest.raises(ValueError, match="PACS_WEBHOOK_ALLOW") as refused:
        PacsSettings()
    assert reason in str(refused.value)


def test_settings_make_the_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PACS_WEBHOOK_ALLOW", '["hooks.example.org", "10.0.0.0/8"]')
    monkeypatch.setenv("PACS_DICOM_PORT", "4242")
    monkeypatch.setenv("PACS_HTTP_PORT", "8042")
    monkeypatch.setenv("PACS_HOST", "10.0.0.2")
    policy = PacsSettings().egress_policy()
    assert policy.allow_hosts == frozenset({"hooks.example.org"})
    assert policy.allow_networks == (ipaddress.ip_network("10.0.0.0/8"),)
    assert policy.own_ports == frozenset({4242, 8042})
    assert policy.own_addresses == frozenset({ipaddress.ip_address("10.0.0.2")})
    with pytest.raises(EgressRefused, match="own port 8042"):
        policy.check("http://10.0.0.2:8042/")
    policy.check("http://10.0.0.3:8042/")
