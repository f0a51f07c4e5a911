"""The real Streamlit server starts, reports healthy and serves the app page."""

from __future__ import annotations

import urllib.request


def test_server_starts_and_serves_the_app(streamlit_server):
    url, log_path = streamlit_server
    with urllib.request.urlopen(f"{url}/_stcore/health", timeout=5) as response:
        assert (response.status, response.read()) == (200, b"ok")
    with urllib.request.urlopen(f"{url}/", timeout=5) as response:
        body = response.read().decode("utf-8", errors="replace")
        assert response.status == 200
    assert '<div id="root">' in body
    assert "Traceback" not in log_path.read_text()
