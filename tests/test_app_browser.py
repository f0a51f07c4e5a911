"""The app in a real browser: headless Chromium (playwright, the system's chromium) against `streamlit run`.

Covers what AppTest cannot: the page renders in a browser, the upload goes through the real file input,
no estimate before the sex is chosen, the result and the Grad-CAM image appear, a typed age applies on Tab,
and the PDF report downloads. In CI (CI=true) a missing browser is a failure; locally it is a skip.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from app import state
from app.options import AGE_MODES, SEXES
from boneage_core.clinical import gp_zscore, load_reference

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("BONEAGE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]
RESULT_MS = 180_000


def _unavailable(why: str) -> None:
    """The browser is part of the test environment (README, .ci/run): its absence is a failure, never a skip."""
    pytest.fail(f"the real-browser test cannot run: {why} (install it: apt-get install chromium)")


@pytest.fixture(scope="module")
def server(streamlit_server) -> str:
    return streamlit_server[0]


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (pip install playwright)")
    if not Path(CHROMIUM).is_file():
        _unavailable(f"no chromium at {CHROMIUM} (apt-get install -y chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        yield browser
        browser.close()


def test_assess_in_a_real_browser(server, browser, fullres_sample, sample_label, gp_table):
    true_months, male = sample_label(fullres_sample.stem)
    predictor = state.get_predictor(str(state.artifacts_dir()))
    expected = predictor.predict(fullres_sample, male=male)
    page = browser.new_page(viewport={"width": 1400, "height": 1800}, accept_downloads=True)
    page.goto(f"{server}/")  # the default page (assess) lives at the root
    page.wait_for_selector("h1", timeout=60_000)
    upload = page.locator(".st-key-assess_upload input[type=file]")
    upload.wait_for(state="attached", timeout=60_000)

    # the upload alone gives no estimate: the sex has no default
    upload.set_input_files(str(fullres_sample))
    page.wait_for_selector(".st-key-assess_upload [data-testid=stFileChip]", timeout=60_000)
    page.wait_for_selector("[data-testid=stAlertContentInfo]", timeout=60_000)
    page.wait_for_timeout(1500)  # a rerun that would show a result has had its time
    assert page.locator("[data-testid=stMetric]").count() == 0
    assert page.locator(".st-key-assess_sex input:checked").count() == 0

    # choosing the sex gives the library's bone age, the Grad-CAM image and the downloads
    page.locator(".st-key-assess_sex").get_by_text(SEXES[int(male)], exact=True).click()
    page.wait_for_selector("[data-testid=stMetricValue]", timeout=RESULT_MS)
    values = page.locator("[data-testid=stMetricValue]").all_inner_texts()
    assert any(str(round(expected.bone_age_months)) in v for v in values), values
    page.wait_for_function("document.querySelectorAll('[data-testid=stImage] img').length >= 3 && "
                           "[...document.querySelectorAll('[data-testid=stImage] img')].every(i => i.naturalWidth > 0)",
                           timeout=RESULT_MS)
    pdf_button = page.locator(".st-key-assess_dl_pdf button")
    pdf_button.wait_for(timeout=RESULT_MS)

    # a typed age applies when the field is left with Tab (no button, no silent default)
    page.locator(".st-key-assess_age_mode").get_by_text(AGE_MODES[1], exact=True).click()
    years = page.locator(".st-key-assess_age_years input")
    years.wait_for(timeout=60_000)
    assert years.input_value() == ""
    years.fill("14")
    years.press("Tab")
    readout = gp_zscore(expected.bone_age_months, expected.interval or (expected.bone_age_months,) * 2, 14 * 12,
                        male, load_reference(gp_table))
    page.wait_for_function(f"document.body.innerText.includes({json.dumps(f'{readout.z_score:+.2f}')})",
                           timeout=60_000)
    assert f"{readout.z_score:+.2f}" in page.locator("[data-testid=stMetricValue]").all_inner_texts()

    # the PDF report downloads
    with page.expect_download(timeout=120_000) as download:
        pdf_button.click()
    path = download.value.path()
    assert Path(path).read_bytes()[:5] == b"%PDF-"
    assert abs(expected.bone_age_months - true_months) < 48
    page.close()


def test_a_page_opens_by_its_url(server, browser):
    """st.navigation with the pages in app/pages: /performance opens that page directly (no 'page not found')."""
    page = browser.new_page(viewport={"width": 1400, "height": 1200})
    page.goto(f"{server}/performance")
    page.wait_for_selector("[data-testid=stPlotlyChart]", timeout=120_000)
    assert page.locator("[data-testid=stDialog]").count() == 0
    assert page.locator(".st-key-perf_cm_normalise").count() == 1  # a widget of the performance page
    page.close()
