"""Screenshots and in-browser timings of the running app via headless Chromium (playwright, the system chromium).

Needs Debian's chromium (apt-get install chromium) and `pip install playwright` (no browser download).
From the repository root, with a server on port 8501 (`streamlit run streamlit_app.py`):
    python -m tools.screenshot http://localhost:8501/ docs/screenshots/assess.png \
        --upload ../shared/data/samples-fullres/1377.png --sex F --years 15
    python -m tools.screenshot http://localhost:8501/ docs/screenshots/assess-phone.png --width 390 --phone \
        --upload ../shared/data/samples-fullres/1377.png --sex F
    python -m tools.screenshot http://localhost:8501/performance docs/screenshots/performance.png
Prints the time to first render and, with --upload, from choosing the sex to a visible result with Grad-CAM.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from app.options import AGE_MODE, AGE_MODES, AGE_YEARS, SEX, SEXES
from boneage_core.vocab import parse_sex

#: True once every Plotly chart on the page has drawn its SVG (charts render after the script has finished).
PLOTS_DRAWN = "[...document.querySelectorAll('[data-testid=stPlotlyChart]')].every(c => c.querySelector('.main-svg'))"
#: What changes while the page is still filling in (loading skeletons replaced by tables, metrics and charts).
PAGE_SIGNATURE = ("(() => { const m = document.querySelector('[data-testid=stMain]'); "
                  "return [m.scrollHeight, m.querySelectorAll('*').length, "
                  "document.querySelectorAll('[data-testid=stSkeleton]').length]; })()")  # height, elements, skeletons
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars"]


def wait_until_settled(page, timeout_s: float, quiet_s: float = 2.0) -> float:
    """Wait until the page's height, element count and skeleton count stay the same for `quiet_s`; seconds waited."""
    t0 = time.monotonic()
    last, since = None, t0
    while time.monotonic() - t0 < timeout_s:
        now = page.evaluate(PAGE_SIGNATURE)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s and now[-1] == 0:  # no skeleton left
            return time.monotonic() - t0
        page.wait_for_timeout(250)
    raise TimeoutError(f"the page kept changing for {timeout_s:.0f} s (last state {last})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("out", type=Path)
    parser.add_argument("--upload", type=Path, help="a radiograph for the assess page")
    parser.add_argument("--sex", help="M or F: chosen after the upload (required for a result)")
    parser.add_argument("--years", type=int, help="chronological age in whole years, typed and applied with Tab")
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=1800)
    parser.add_argument("--phone", action="store_true", help="mobile emulation (touch, device scale 2)")
    parser.add_argument("--full-page", action="store_true", help="capture the whole scrollable page")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    parser.add_argument("--timeout", type=float, default=180)
    args = parser.parse_args(argv)
    if args.upload and args.sex is None:
        parser.error("--upload needs --sex (the app gives no estimate without it)")
    from playwright.sync_api import sync_playwright

    ms = int(args.timeout * 1000)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=args.chromium, args=FLAGS, headless=True)
        page = browser.new_page(viewport={"width": args.width, "height": args.height},
                                device_scale_factor=2 if args.phone else 1, is_mobile=args.phone, has_touch=args.phone)
        t0 = time.monotonic()
        page.goto(args.url)
        page.wait_for_selector("h1", timeout=ms)
        print(f"first render (h1 visible) {time.monotonic() - t0:.2f} s after navigate")
        if args.upload:
            page.locator(".st-key-assess_upload input[type=file]").set_input_files(str(args.upload))
            page.wait_for_selector(".st-key-assess_upload [data-testid=stFileChip]", timeout=ms)
            t1 = time.monotonic()
            page.locator(f"[class*='st-key-{SEX}__']").get_by_text(SEXES[int(parse_sex(args.sex))], exact=True).click()
            page.wait_for_function("document.querySelectorAll('[data-testid=stImage] img').length >= 3", timeout=ms)
            print(f"sex chosen -> result with Grad-CAM visible {time.monotonic() - t1:.2f} s")
            if args.years is not None:
                page.locator(f"[class*='st-key-{AGE_MODE}__']").get_by_text(AGE_MODES[1], exact=True).click()
                years = page.locator(f"[class*='st-key-{AGE_YEARS}__'] input")
                years.fill(str(args.years))
                years.press("Tab")
                page.get_by_text("z interval").wait_for(timeout=ms)
        page.wait_for_timeout(3000)  # let charts and images settle
        page.wait_for_selector("[data-testid=stStatusWidget]", state="detached", timeout=ms)
        page.wait_for_function(PLOTS_DRAWN, timeout=ms)
        print(f"settled after {wait_until_settled(page, args.timeout):.1f} s more")
        page.evaluate("window.scrollTo(0, 0)")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(args.out), full_page=args.full_page)
        print("saved", args.out)
        browser.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
