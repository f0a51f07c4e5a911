"""Servers run as child processes by tests and benchmarks: a free loopback port, healthy by a deadline, stopped."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

HOST = "127.0.0.1"  # servers under test listen on the loopback address only
POLL_S = 0.2  # interval between health probes, bounded by the deadline


def free_port() -> int:
    """A TCP port free on the loopback address now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


@contextmanager
def child_server(command: Sequence[str], health_url: str, log_path: Path, startup_s: float,
                 cwd: Path | None = None, env: dict | None = None) -> Iterator[tuple[subprocess.Popen, float]]:
    """Run `command` (output to log_path) until `health_url` answers 200; yields the process and the seconds that took.

    AssertionError (with the log) when the process exits first or is not healthy within startup_s; the process
    is terminated (killed after 15 s) on the way out either way.
    """
    with log_path.open("w") as log:
        proc = subprocess.Popen(list(command), cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            t0 = time.monotonic()
            while not _healthy(health_url):
                assert proc.poll() is None, f"server exited early:\n{log_path.read_text()}"
                assert time.monotonic() - t0 < startup_s, f"no healthy server in {startup_s} s:\n{log_path.read_text()}"
                time.sleep(POLL_S)
            yield proc, time.monotonic() - t0
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
