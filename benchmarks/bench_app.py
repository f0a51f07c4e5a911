"""Dashboard timings: server cold start (health, and the static page shell over HTTP), and upload-to-result.

The page script itself runs only once a browser connects: tools/screenshot.py times that in headless
Chromium. Upload-to-result here is the assess page's own calls (app.state), bytes -> prediction + Grad-CAM.

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
        prediction = state.predict(predictor, data, image.name, male=False)
        predictor.explain(prediction.original, prediction.male, head=head, class_index=prediction.stage)
        times.append(time.perf_counter() - t0)
    return load, times[0], times[1:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    health, page, status = cold_start()
    print(f"cold start       health ok {health:.2f} s, static shell GET / -> HTTP {status} at {page:.2f} s")
    load, first, warm = upload_to_result(args.image, args.repeats)
    print(f"model load       {load:.2f} s (once per server, st.cache_resource)")
    print(f"upload->result   first {first:.2f} s, then median {statistics.median(warm):.2f} s "
          f"(min {min(warm):.2f}, max {max(warm):.2f}) for {args.image.name}: prediction + Grad-CAM, "
          f"torch threads {torch.get_num_threads()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
