"""The real Streamlit server starts, reports healthy and serves the app page."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STARTUP_TIMEOUT_S = 60


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, response.read().decode("utf-8", errors="replace")


def test_server_starts_and_serves_the_app(tmp_path):
    port = _free_port()
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.headless", "true",
         "--server.port", str(port), "--browser.gatherUsageStats", "false"],
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        health = None
        while time.monotonic() < deadline:
            assert server.poll() is None, f"server exited early:\n{(tmp_path / 'server.log').read_text()}"
            try:
                health = _get(f"http://localhost:{port}/_stcore/health")
                if health == (200, "ok"):
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.5)
        assert health == (200, "ok"), f"no healthy server within {STARTUP_TIMEOUT_S} s: {health}"
        status, body = _get(f"http://localhost:{port}/")
        assert status == 200
        assert "<title>Streamlit</title>" in body or "streamlit" in body.lower()
        assert '<div id="root">' in body
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
