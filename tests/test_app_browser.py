"""The app in a real browser: headless Chromium (playwright, the system's chromium) against `streamlit run`.

Covers what AppTest cannot: the page renders in a browser, the upload goes through the real file input,
no estimate before the sex is chosen, the result and the Grad-CAM image appear, a typed age applies on Tab,
the PDF report downloads, the next child's film starts with no sex although the browser still held the last
one's, a right hand and an inverted film are read corrected and said so, and no number is cut off at 1024 px,
1400 px or a phone's width. A missing browser is a failure, never a skip.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from app import state
from app.options import AGE_MODE, AGE_MODES, AGE_YEARS, SEX, SEXES
from boneage_core.clinical import gp_zscore, load_reference

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("BONEAGE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]
RESULT_MS = 180_000
#: Patient inputs have a widget key per film (app.options.patient_key): select them by their base key.
SEX_INPUT, AGE_MODE_INPUT, YEARS_INPUT = (f"[class*='st-key-{name}__']" for name in (SEX, AGE_MODE, AGE_YEARS))
ASK_FOR_SEX = "Choose the patient's sex"


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
    _upload_and_wait_for_the_sex_question(page, fullres_sample)

    # choosing the sex gives the library's bone age, the Grad-CAM image and the downloads
    page.locator(SEX_INPUT).get_by_text(SEXES[int(male)], exact=True).click()
    page.wait_for_selector("[data-testid=stMetricValue]", timeout=RESULT_MS)
    values = page.locator("[data-testid=stMetricValue]").all_inner_texts()
    assert any(str(round(expected.bone_age_months)) in v for v in values), values
    page.wait_for_function("document.querySelectorAll('[data-testid=stImage] img').length >= 3 && "
                           "[...document.querySelectorAll('[data-testid=stImage] img')].every(i => i.naturalWidth > 0)",
                           timeout=RESULT_MS)
    pdf_button = page.locator(".st-key-assess_dl_pdf button")
    pdf_button.wait_for(timeout=RESULT_MS)

    # a typed age applies when the field is left with Tab (no button, no silent default)
    page.locator(AGE_MODE_INPUT).get_by_text(AGE_MODES[1], exact=True).click()
    years = page.locator(f"{YEARS_INPUT} input")
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


def _upload_and_wait_for_the_sex_question(page, path: Path) -> None:
    """Upload a film and wait for the run that asks for the sex (the last run of an upload), then check that it
    shows no estimate and no chosen sex."""
    page.locator(".st-key-assess_upload input[type=file]").set_input_files(str(path))
    page.wait_for_selector(f".st-key-assess_upload [data-testid=stFileChip][aria-label^='{path.name}']", timeout=60_000)
    page.get_by_text(ASK_FOR_SEX).wait_for(timeout=RESULT_MS)  # the first visit may still be loading the models
    assert page.locator("[data-testid=stMetric]").count() == 0
    assert page.locator(f"{SEX_INPUT} input:checked").count() == 0, "a sex is chosen that nobody chose for this film"


def _cut_off_numbers(page) -> list[str]:
    """Metric values the page shows cut off (an ellipsis: the text is wider than its box)."""
    return page.evaluate("""() => [...document.querySelectorAll('[data-testid=stMetricValue]')]
        .filter(el => [el, ...el.querySelectorAll('*')].some(e => e.scrollWidth > e.clientWidth + 1))
        .map(el => el.innerText)""")


def _assess_as(page, sex: str) -> list[str]:
    page.locator(SEX_INPUT).get_by_text(sex, exact=True).click()
    page.wait_for_selector("[data-testid=stMetricValue]", timeout=RESULT_MS)
    return page.locator("[data-testid=stMetricValue]").all_inner_texts()


def test_two_children_in_a_row_each_with_their_own_sex(server, browser, fullres_dir, sample_label):
    """A boy, then a girl's film put in his place (+), then a film after removing hers (x): each new film starts
    with no sex chosen and no result, although the browser still holds the previous child's choice; each is read
    with its own sex. At 1024 px no number is cut off."""
    predictor = state.get_predictor(str(state.artifacts_dir()))
    films = sorted(fullres_dir.glob("*.png"))
    boy = next(p for p in films if sample_label(p.stem)[1])
    girl = next(p for p in films if not sample_label(p.stem)[1])
    page = browser.new_page(viewport={"width": 1024, "height": 1400})
    page.goto(f"{server}/")
    page.locator(".st-key-assess_upload input[type=file]").wait_for(state="attached", timeout=RESULT_MS)
    _upload_and_wait_for_the_sex_question(page, boy)
    values = _assess_as(page, SEXES[1])
    assert f"{round(predictor.predict(boy, male=True).bone_age_months)} months" in values
    assert _cut_off_numbers(page) == []

    _upload_and_wait_for_the_sex_question(page, girl)  # replaces the boy's film
    values = _assess_as(page, SEXES[0])
    assert f"{round(predictor.predict(girl, male=False).bone_age_months)} months" in values, values
    page.get_by_text("for girls").first.wait_for(timeout=10_000)

    page.locator(".st-key-assess_upload [data-testid=stFileChipDeleteBtn] button").click()
    page.get_by_text("Upload a radiograph to start").wait_for(timeout=60_000)
    _upload_and_wait_for_the_sex_question(page, boy)
    page.close()


@pytest.mark.parametrize("width", [1400, 1024, 390])
def test_no_number_is_cut_off(server, browser, fullres_sample, sample_label, width):
    """The headline and the read-out at a desktop, a small laptop and a phone width: every number whole."""
    _, male = sample_label(fullres_sample.stem)
    page = browser.new_page(viewport={"width": width, "height": 1600})
    page.goto(f"{server}/")
    page.locator(".st-key-assess_upload input[type=file]").wait_for(state="attached", timeout=RESULT_MS)
    _upload_and_wait_for_the_sex_question(page, fullres_sample)
    _assess_as(page, SEXES[int(male)])
    page.locator(AGE_MODE_INPUT).get_by_text(AGE_MODES[1], exact=True).click()
    years = page.locator(f"{YEARS_INPUT} input")
    years.fill("9")
    years.press("Enter")
    page.get_by_text("z interval").wait_for(timeout=60_000)
    assert page.locator("[data-testid=stMetricValue]").count() >= 6
    assert _cut_off_numbers(page) == []
    page.close()


def test_a_page_opens_by_its_url(server, browser):
    """st.navigation with the pages in app/pages: /performance opens that page directly (no 'page not found')."""
    page = browser.new_page(viewport={"width": 1400, "height": 1200})
    page.goto(f"{server}/performance")
    page.wait_for_selector("[data-testid=stPlotlyChart]", timeout=120_000)
    assert page.locator("[data-testid=stDialog]").count() == 0
    assert page.locator(".st-key-perf_cm_normalise").count() == 1  # a widget of the performance page
    page.close()


@pytest.mark.parametrize("correction,said", [("mirrored", "read as a right hand"),
                                             ("inverted", "the grey scale was inverted")])
def test_a_right_hand_and_an_inverted_film_are_read_corrected_and_said_so(server, browser, fullres_dir, sample_label,
                                                                          tmp_path, correction, said):
    """A right hand (the film mirrored) and a MONOCHROME1-like film read the wrong way (grey scale inverted), uploaded
    as PNG files: each is read as the film itself would be, and the page says what was corrected (issue 29)."""
    import numpy as np
    from PIL import Image

    from boneage_core.imaging import load_gray

    film = fullres_dir / "1380.png"
    _, male = sample_label(film.stem)
    gray = load_gray(film)
    changed = np.ascontiguousarray(gray[:, ::-1]) if correction == "mirrored" else 1.0 - gray
    path = tmp_path / f"{correction}_{film.name}"
    Image.fromarray(np.round(changed * 255).astype(np.uint8)).save(path)
    predictor = state.get_predictor(str(state.artifacts_dir()))
    expected = predictor.predict(path, male=male)
    assert getattr(expected, correction), expected.warnings  # the gate corrects it (tests/test_gate.py)
    assert abs(expected.bone_age_months - predictor.predict(film, male=male).bone_age_months) < 1.0
    page = browser.new_page(viewport={"width": 1400, "height": 1800})
    page.goto(f"{server}/")
    page.locator(".st-key-assess_upload input[type=file]").wait_for(state="attached", timeout=RESULT_MS)
    _upload_and_wait_for_the_sex_question(page, path)
    values = _assess_as(page, SEXES[int(male)])
    assert f"{round(expected.bone_age_months)} months" in values, values
    page.get_by_text(said).first.wait_for(timeout=10_000)
    page.close()
