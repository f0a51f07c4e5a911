"""Dashboard timings: server cold start (health, the static page shell), first use in a browser, upload-to-result.

First use (--browser): a fresh server and headless Chromium, as a first visitor meets them: the page's title, the
models loaded (the page loads them when it opens, below the uploader), and the first result after the sex is chosen. Upload-to-result is the assess page's own calls (app.state), bytes -> prediction + Grad-CAM.

python -m benchmarks.bench_app --image ../shared/data/samples-fullres/1377.png
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.status, response.read()


def cold_start(timeout: float = 90.0) -> tuple[float, float, int]:
    """Seconds from launching `streamlit run` to health 'ok' and to the first GET / (and its status)."""
    port = _free_port()
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.headless", "true",
                             "--server.port", str(port)], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            if time.perf_counter() - t0 > timeout:
                raise TimeoutError(f"server not healthy after {timeout:.0f} s")
            try:
                if _get(f"http://localhost:{port}/_stcore/health", 2)[1] == b"ok":
                    health = time.perf_counter() - t0
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.05)
        status, _ = _get(f"http://localhost:{port}/")
        return health, time.perf_counter() - t0, status
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def first_use_in_browser(image: Path, chromium: str = "/usr/bin/chromium") -> dict[str, float]:
    """Seconds from launching a fresh `streamlit run` to: healthy, the page's title, the models loaded (the page's
    invitation to upload, drawn after them);
    and from choosing the sex to the first result (its metrics), in headless Chromium."""
    import tempfile

    from playwright.sync_api import sync_playwright

    from app.options import SEX, SEXES
    from tests.servers import HOST, child_server, free_port

    port = free_port()
    command = [sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.headless", "true",
               "--server.port", str(port), "--server.address", HOST, "--browser.gatherUsageStats", "false"]
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run"]
    out = {}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, child_server(command, f"http://{HOST}:{port}/_stcore/health",
                                                            Path(tmp) / "server.log", 120, cwd=REPO):
        out["healthy"] = time.perf_counter() - t0
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, args=flags, headless=True)
            page = browser.new_page(viewport={"width": 1400, "height": 1600})
            page.goto(f"http://{HOST}:{port}/")
            page.wait_for_selector("h1", timeout=300_000)
            out["title"] = time.perf_counter() - t0
            page.get_by_text("Upload a radiograph to start").wait_for(timeout=300_000)  # shown once the models load
            out["models loaded"] = time.perf_counter() - t0
            upload = page.locator(".st-key-assess_upload input[type=file]")
            upload.set_input_files(str(image))
            sex = page.locator(f"[class*='st-key-{SEX}__']")
            sex.wait_for(timeout=120_000)
            t1 = time.perf_counter()
            sex.get_by_text(SEXES[0], exact=True).click()
            page.wait_for_selector("[data-testid=stMetricValue]", timeout=300_000)
            out["sex chosen -> first result"] = time.perf_counter() - t1
            browser.close()
    return out


def upload_to_result(image: Path, repeats: int) -> tuple[float, float, list[float]]:
    """(model load s, first result s, warm result times): the assess page's own calls, uncached."""
    from app import state
    from boneage_core.heads import AGE
    from boneage_core.predictor import Predictor

    t0 = time.perf_counter()
    predictor = Predictor.load(state.artifacts_dir(), device="cpu")
    load = time.perf_counter() - t0
    data = image.read_bytes()
    head = AGE if AGE in predictor.heads else predictor.heads[0]
    times = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        prediction = state.assessment(predictor, data, image.name, False, None, None).prediction
        predictor.explain(prediction.original, prediction.male, head=head, class_index=prediction.stage)
        times.append(time.perf_counter() - t0)
    return load, times[0], times[1:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--browser", action="store_true", help="also time the first use in headless Chromium")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    health, page, status = cold_start()
    print(f"cold start       health ok {health:.2f} s, static shell GET / -> HTTP {status} at {page:.2f} s")
    if args.browser:
        first_use = first_use_in_browser(args.image)
        print("first use        " + ", ".join(f"{k} {v:.2f} s" for k, v in first_use.items())
              + " (a fresh server, headless Chromium; times from launch, the last from the click)")
    load, first, warm = upload_to_result(args.image, args.repeats)
    print(f"model load       {load:.2f} s (once per server, st.cache_resource)")
    print(f"upload->result   first {first:.2f} s, then median {statistics.median(warm):.2f} s "
          f"(min {min(warm):.2f}, max {max(warm):.2f}) for {args.image.name}: prediction + Grad-CAM, "
          f"torch threads {torch.get_num_threads()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
