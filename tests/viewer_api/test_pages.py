"""The radiologist's pages: served without a token, under a strict Content-Security-Policy,
and written so that the policy holds (no inline code) and API values stay text."""

from __future__ import annotations

import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest

from tests.servers import PacsServer
from viewer_api.pages import ASSETS, PAGES, STATIC

ISSUER = "https://login.example.org/realms/radiology"


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PacsServer]:
    server = PacsServer(tmp_path_factory.mktemp("pages") / "home").start()
    yield server
    server.stop()


class _Markup(HTMLParser):
    """What in a page the policy would block: inline scripts, handlers, style attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.blocked: list[str] = []
        self.scripts: list[str] = []
        self._in_inline_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = dict(attrs)
        self.blocked += [f"{tag} {name}" for name in names if name.startswith("on")]
        if "style" in names or tag == "style":
            self.blocked.append(f"{tag} style")
        if tag == "script":
            if names.get("src"):
                self.scripts.append(str(names["src"]))
            else:
                self._in_inline_script = True

    def handle_endtag(self, tag: str) -> None:
        self._in_inline_script = False

    def handle_data(self, data: str) -> None:
        if self._in_inline_script and data.strip():
            self.blocked.append("inline script")


def test_the_root_leads_to_the_worklist(pages: PacsServer) -> None:
    response = httpx.get(pages.url + "/")
    assert response.status_code == 307 and response.headers["location"] == "/worklist"


@pytest.mark.parametrize("path", sorted(PAGES))
def test_pages_come_without_a_token_under_a_strict_policy(pages: PacsServer, path: str) -> None:
    response = httpx.get(pages.url + path)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    policy = dict(
        d.strip().split(" ", 1) for d in response.headers["content-security-policy"].split(";")
    )
    assert policy["default-src"] == "'none'"
    assert policy["script-src"] == "'self'" and policy["style-src"] == "'self'"
    assert policy["connect-src"] == "'self'" and policy["frame-ancestors"] == "'none'"
    assert response.headers["referrer-policy"] == "no-referrer"
    markup = _Markup()
    markup.feed(response.text)
    assert markup.blocked == []
    # Every script the page loads is one of ours, and is served.
    assert markup.scripts and all(s.startswith("/ui/") for s in markup.scripts)
    for script in markup.scripts:
        loaded = httpx.get(pages.url + script)
        assert loaded.status_code == 200
        assert loaded.headers["content-type"].startswith("text/javascript")


@pytest.mark.parametrize("name", sorted(ASSETS))
def test_scripts_never_parse_data_as_html(name: str) -> None:
    text = (STATIC / name).read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in text, f"{name} uses {sink}"
    assert not re.search(r"https?://", text.replace("http://www.w3.org", "")), name


def test_only_the_pages_own_files_are_served_under_ui(pages: PacsServer) -> None:
    assert httpx.get(pages.url + "/ui/pages.css").headers["content-type"].startswith("text/css")
    for path in ("/ui/worklist.html", "/ui/..%2fpages.py", "/ui/nothing.js"):
        assert httpx.get(pages.url + path).status_code == 404, path


def test_settings_name_no_issuer_with_the_embedded_secret(pages: PacsServer) -> None:
    assert httpx.get(pages.url + "/ui/settings.json").json() == {"oidc_issuer": None}


def test_settings_name_the_oidc_issuer(tmp_path: Path) -> None:
    env = {"PACS_OIDC_ISSUER": ISSUER, "PACS_OIDC_AUDIENCE": "pacs"}
    server = PacsServer(tmp_path / "home", env).start()
    try:
        settings = httpx.get(server.url + "/ui/settings.json").json()
    finally:
        server.stop()
    assert settings == {"oidc_issuer": ISSUER}
