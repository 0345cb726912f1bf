"""A radiologist's session in a real browser (issue 11): sign in on the worklist, find the
AI-flagged CT first, read it in OHIF (the CT, the SR's nodule, the SEG overlay), confirm the
nodule in the review panel and sign; the EMR then reads a final report over FHIR, and the
signed SR comes back over WADO-RS and passes dciodvfy.

Every request of the pages and of OHIF that our server answers with 400 or more fails the
test; the log of both (console errors too) is printed when anything fails.
"""

from __future__ import annotations

import re
from io import BytesIO
from pathlib import Path

import httpx
import numpy as np
import pytest
from dicomweb_client import DICOMwebClient
from PIL import Image
from playwright.sync_api import Browser, BrowserContext, Page, expect

from tests.e2e.conftest import READER, AnalysedStudy, BrowserLog
from tests.inference.sr_checks import dciodvfy

pytestmark = pytest.mark.slow

#: OHIF's onboarding tour would cover the viewport on a first visit.
SKIP_TOUR = """
try { localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour'])); } catch {}
"""  # (about:blank, where a popup starts, has no localStorage)
LOAD = 90_000  # ms: OHIF on a software-rendered, shared CPU


def _sign_in(page: Page, study: AnalysedStudy, artifacts: Path) -> None:
    """The worklist: paste the token once, the flagged LIDC-IDRI-0001 study comes first."""
    page.goto(study.server.url + "/")  # redirects to /worklist
    expect(page).to_have_url(re.compile(r"/worklist$"))
    page.fill("#token", study.token)
    page.click("#signin button[type=submit]")
    first = page.locator("#worklist tbody tr").first
    expect(first).to_have_attribute("data-study", study.StudyInstanceUID, timeout=30_000)
    expect(first).to_have_attribute("data-flagged", "true")
    expect(first.locator("td.flag")).to_contain_text("flagged")
    expect(page.locator("#signed-in-as")).to_contain_text(f"Signed in as {READER} (radiologist)")
    page.screenshot(path=artifacts / "worklist.png", full_page=True)


def _viewport_pixels(viewer: Page) -> np.ndarray:
    shot = viewer.locator("[data-cy=viewport-pane] canvas").first.screenshot()
    return np.asarray(Image.open(BytesIO(shot)).convert("L"), dtype=np.float64)


def _read_in_ohif(context: BrowserContext, page: Page, log: BrowserLog, artifacts: Path) -> str:
    """The row's OHIF link: the CT renders, the SR's nodule is listed, the SEG overlay loads.
    Returns the image number OHIF lists the nodule on."""
    with context.expect_page() as opened:
        page.locator("#worklist tbody tr").first.locator("a.open-viewer").click()
    viewer = opened.value
    log.attach(viewer)
    # The token came in the URL and OHIF took it out of the address bar.
    viewer.wait_for_url(lambda url: "token=" not in url, timeout=LOAD)
    # 1. The CT renders: a canvas with an image on it, not a blank one.
    viewer.locator("[data-cy=viewport-pane] canvas").first.wait_for(timeout=LOAD)
    expect(viewer.locator("[data-cy=viewport-overlay-bottom-right]")).to_contain_text(
        "/133", timeout=LOAD
    )
    pixels = _viewport_pixels(viewer)
    assert pixels.std() > 20 and len(np.unique(pixels)) > 50, "the CT viewport is blank"
    # 2. The AI SR: OHIF draws its nodule and, once tracked, lists it in its Measurements panel.
    viewer.get_by_text("SR", exact=True).first.dblclick()
    viewer.get_by_role("button", name="Yes").click(timeout=LOAD)
    viewer.locator("[data-cy=trackedMeasurements-btn]").click()
    rows = viewer.locator("[data-cy=trackedMeasurements-panel] [data-cy^=measurement-table-row-]")
    expect(rows).to_have_count(1, timeout=LOAD)
    expect(rows.first).to_contain_text("Nodule")
    expect(rows.first).to_contain_text(re.compile(r"I:\s*\d+"), timeout=LOAD)
    listed = re.search(r"I:\s*(\d+)", rows.first.inner_text())
    assert listed is not None, rows.first.inner_text()
    viewer.screenshot(path=artifacts / "ohif-nodule.png")
    # 3. The AI SEG: OHIF loads it as a segmentation overlay with its nodule segment.
    viewer.get_by_text("SEG", exact=True).first.dblclick()
    viewer.get_by_role("button", name="Yes").click(timeout=LOAD)
    viewer.locator("[data-cy=panelSegmentation-btn]").click()
    expect(viewer.get_by_text("Nodule 1")).to_be_visible(timeout=LOAD)
    assert not [m for m in log.console if "failed to load" in m.lower()], log.report()
    viewer.close()
    return listed.group(1)


def _review_and_sign(
    context: BrowserContext,
    page: Page,
    study: AnalysedStudy,
    log: BrowserLog,
    image: str,
    artifacts: Path,
) -> dict[str, object]:
    """The review panel: a stale action is refused with a clear message; the nodule is
    confirmed (nothing rejected), its link opens OHIF on its slice, and the report is signed."""
    page.locator("#worklist tbody tr").first.locator("a.open-review").click()
    card = page.locator(".finding")
    expect(card).to_have_count(1, timeout=30_000)
    expect(card).to_have_attribute("data-decision", "pending")
    expect(page.locator("#version")).to_have_text("0")
    # The finding's link opens OHIF on the image the SR lists the nodule on.
    with context.expect_page() as opened:
        card.locator("a.open-finding").click()
    at_nodule = opened.value
    log.attach(at_nodule)
    expect(at_nodule.locator("[data-cy=viewport-overlay-bottom-right]")).to_contain_text(
        f"I:{image} (", timeout=LOAD
    )
    at_nodule.close()
    # Another radiologist acts meanwhile: this page's version is stale, the action refused.
    other = study.server.pacs(
        "token", "create", "--role", "radiologist", "--subject", "dr-other"
    ).stdout.strip()
    impression = httpx.post(
        f"{study.server.url}/api/v1/studies/{study.StudyInstanceUID}/review/impression",
        headers={"Authorization": f"Bearer {other}"},
        json={"version": 0, "text": "Solitary nodule, left lower lobe."},
    )
    assert impression.status_code == 200, impression.text
    card.locator("button.confirm").click()
    expect(page.locator("#message")).to_have_class("error")
    expect(page.locator("#message")).to_contain_text("Not saved")
    expect(page.locator("#version")).to_have_text("1")  # reloaded: now the current version
    expect(card).to_have_attribute("data-decision", "pending")
    # Confirm, reject nothing, sign.
    card.locator("button.confirm").click()
    expect(card).to_have_attribute("data-decision", "confirmed")
    expect(page.locator("#sign")).to_be_enabled()
    page.locator("#sign").click()
    expect(page.locator("#status")).to_have_text("final", timeout=60_000)
    page.screenshot(path=artifacts / "review.png", full_page=True)
    review: dict[str, object] = study.api(f"/api/v1/studies/{study.StudyInstanceUID}/review")
    return review


def _check_signed_report(study: AnalysedStudy, review: dict[str, object], tmp_path: Path) -> None:
    """The EMR's view (FHIR) and the archive's (the signed SR over WADO-RS, dciodvfy)."""
    emr = study.server.token("emr")
    bundle = study.api(f"/fhir/DiagnosticReport?study={study.StudyInstanceUID}", token=emr)
    resources = [entry["resource"] for entry in bundle["entry"]]
    [report] = [r for r in resources if r["resourceType"] == "DiagnosticReport"]
    observations = [r for r in resources if r["resourceType"] == "Observation"]
    assert report["status"] == "final"
    assert report["performer"] == [{"display": READER}]
    assert len(report["result"]) == len(observations) == 1
    signed = review["signed"]
    assert isinstance(signed, dict)
    web = DICOMwebClient(
        f"{study.server.url}/dicom-web", headers={"Authorization": f"Bearer {study.token}"}
    )
    sr = web.retrieve_instance(
        study.StudyInstanceUID, signed["SeriesInstanceUID"], signed["SOPInstanceUID"]
    )
    assert sr.VerificationFlag == "VERIFIED" and sr.CompletionFlag == "COMPLETE"
    assert dciodvfy(sr, tmp_path / "signed-sr.dcm") == []


def test_a_radiologist_reads_and_signs_in_a_real_browser(
    analysed: AnalysedStudy, browser: Browser, artifacts: Path, tmp_path: Path
) -> None:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    context.add_init_script(SKIP_TOUR)
    log = BrowserLog(analysed.server.url)
    page = context.new_page()
    log.attach(page)
    try:
        _sign_in(page, analysed, artifacts)
        image = _read_in_ohif(context, page, log, artifacts)
        review = _review_and_sign(context, page, analysed, log, image, artifacts)
        _check_signed_report(analysed, review, tmp_path)
        # The stale action's 409 was expected; every other answer was a success.
        unexpected = [f for f in log.failed if not f.startswith("409 POST")]
        assert unexpected == [], log.report()
    finally:
        print(log.report())
        context.close()
