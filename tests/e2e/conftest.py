"""A real browser against a real archive: Debian's Chromium driven by Playwright, and
`pacs serve` holding LIDC-IDRI-0001 (sent by storescu, analysed by the bundled demo model)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Request, Response, sync_playwright

from tests.dicom import LIDC_0001, dicom_files
from tests.servers import REPO, PacsServer, storescu, wait_for

#: Playwright cannot download its own browser here: Debian's package is the one driven.
CHROMIUM = Path("/usr/bin/chromium")
#: Screenshots kept for people to look at (git-ignored).
ARTIFACTS = REPO / "tests" / "artifacts"
#: The radiologist who reads and signs.
READER = "dr-reader"


@dataclass(frozen=True)
class AnalysedStudy:
    """The running archive, the analysed study, and a radiologist's token."""

    server: PacsServer
    StudyInstanceUID: str
    token: str

    def api(self, path: str, token: str | None = None) -> Any:
        response = httpx.get(
            self.server.url + path,
            headers={"Authorization": f"Bearer {token or self.token}"},
            timeout=30,
        )
        assert response.status_code == 200, f"{path}: {response.status_code} {response.text}"
        return response.json()


@dataclass
class BrowserLog:
    """What the pages said and which of our answers failed, printed when a test fails."""

    origin: str
    console: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def attach(self, page: Page) -> None:
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.console.append(f"pageerror: {error}"))
        page.on("response", self._response)
        page.on("requestfailed", self._request_failed)

    def _console(self, message: ConsoleMessage) -> None:
        if message.type in ("error", "warning"):
            self.console.append(f"{message.type}: {message.text[:1000]}")

    def _response(self, response: Response) -> None:
        if response.status >= 400 and response.url.startswith(self.origin):
            request = response.request
            accept = request.headers.get("accept")
            self.failed.append(
                f"{response.status} {request.method} {response.url} (Accept: {accept})"
            )

    def _request_failed(self, request: Request) -> None:
        if request.url.startswith(self.origin) and request.failure != "net::ERR_ABORTED":
            self.failed.append(f"failed {request.method} {request.url}: {request.failure}")

    def report(self) -> str:
        lines = ["requests our server failed:", *self.failed, "console errors and warnings:"]
        return "\n".join([*lines, *self.console])


@pytest.fixture(scope="package")
def analysed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AnalysedStudy]:
    """LIDC-IDRI-0001 sent by storescu to `pacs serve` and analysed by its in-process worker."""
    home = tmp_path_factory.mktemp("e2e") / "home"
    server = PacsServer(home, {"PACS_STABLE_AGE": "1", "PACS_WORKERS": "1"}).start()
    try:
        storescu(server, LIDC_0001)
        first = pydicom.dcmread(dicom_files(LIDC_0001)[0], stop_before_pixels=True)
        reader = server.pacs("token", "create", "--role", "radiologist", "--subject", READER)
        study = AnalysedStudy(server, str(first.StudyInstanceUID), reader.stdout.strip())
        wait_for(
            lambda: (
                study.api(f"/api/v1/studies/{study.StudyInstanceUID}/findings")["status"] == "done"
            ),
            timeout=300,
            what="the demo model's analysis of LIDC-IDRI-0001",
        )
        yield study
    finally:
        server.stop()


@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    """Headless Chromium; without its sandbox only when running as root, which it refuses."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: make system-deps installs Debian's chromium")
    arguments = ["--no-sandbox"] if os.geteuid() == 0 else []
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=arguments
        )
        yield launched
        launched.close()


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
