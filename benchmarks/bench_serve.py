"""Bounded load test of the REST service on 127.0.0.1: errors, latency (p50/p95) and the server's RSS before/after.

python -m benchmarks.bench_serve --image ../shared/data/samples-fullres/1377.png --clients 4 --requests 50
Starts `python -m boneage_core.serve` on a free loopback port, warms it with one request, then `--clients` threads
each post `--requests` assessments (stopping early at `--max-seconds`), and stops the server. Loopback only.
Exits 1 on any error (a non-200 answer or a failed request).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from tests.servers import HOST, child_server, free_port  # HOST is the loopback address: the load stays here

STARTUP_S = 180


def _rss_mb(pid: int) -> float:
    """Resident set size of a process (Linux /proc), MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def _sample_rss(pid: int, stop: threading.Event, samples: list[float], every_s: float = 0.5) -> None:
    """The server's RSS every `every_s` seconds until `stop` is set."""
    while not stop.wait(every_s):
        samples.append(_rss_mb(pid))


def _client(url: str, image: bytes, name: str, n: int, deadline: float, latencies: list[float], errors: list[str]):
    with httpx.Client(timeout=120) as client:
        for i in range(n):
            if time.monotonic() > deadline:
                return
            t0 = time.perf_counter()
            try:
                response = client.post(f"{url}/v1/assess", files={"image": (name, image, "image/png")},
                                       data={"sex": "F" if i % 2 else "M", "chronological_age_months": "120"})
            except httpx.HTTPError as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                continue
            latencies.append(time.perf_counter() - t0)
            if response.status_code != 200:
                errors.append(f"{response.status_code}: {response.text[:200]}")


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", type=Path, required=True)
    parser.add_argument("--artifacts", default="artifacts")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--requests", type=int, default=50, help="per client")
    parser.add_argument("--max-seconds", type=float, default=540, help="the load stops by itself after this")
    args = parser.parse_args(argv)
    image = args.image.read_bytes()
    port = free_port()
    url = f"http://{HOST}:{port}"
    env = {**os.environ, "BONEAGE_API_TOKEN": ""}
    command = [sys.executable, "-m", "boneage_core.serve", "--artifacts", args.artifacts, "--host", HOST,
               "--port", str(port)]
    with tempfile.TemporaryDirectory() as logs, \
            child_server(command, f"{url}/v1/health", Path(logs) / "serve.log", STARTUP_S, env=env) as (proc, startup):
        warm: list[float] = []
        warm_errors: list[str] = []
        _client(url, image, args.image.name, 1, time.monotonic() + 120, warm, warm_errors)
        rss_before = _rss_mb(proc.pid)
        latencies: list[float] = []
        errors: list[str] = list(warm_errors)
        deadline = time.monotonic() + args.max_seconds
        threads = [threading.Thread(target=_client, args=(url, image, args.image.name, args.requests, deadline,
                                                          latencies, errors)) for _ in range(args.clients)]
        samples: list[float] = []
        stop = threading.Event()
        sampler = threading.Thread(target=_sample_rss, args=(proc.pid, stop, samples))
        t0 = time.perf_counter()
        for thread in [sampler, *threads]:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - t0
        stop.set()
        sampler.join()
        rss_after = _rss_mb(proc.pid)
    done = len(latencies)
    print(f"server healthy {startup:.1f} s after launch; first (warm-up) request {warm[0] if warm else float('nan'):.2f} s")
    print(f"{args.clients} clients x {args.requests} requests: {done} answered in {wall:.1f} s "
          f"({done / wall:.2f} req/s), errors {len(errors)}")
    if latencies:
        print(f"latency p50 {statistics.median(latencies):.2f} s, p95 {_percentile(latencies, 0.95):.2f} s, "
              f"max {max(latencies):.2f} s")
    print(f"server RSS {rss_before:.0f} MB after warm-up, {rss_after:.0f} MB after the load "
          f"({rss_after - rss_before:+.0f} MB)")
    if len(samples) >= 4:
        quarter = len(samples) // 4
        print(f"server RSS during the load (every 0.5 s): first quarter mean {statistics.mean(samples[:quarter]):.0f} MB, "
              f"last quarter mean {statistics.mean(samples[-quarter:]):.0f} MB, max {max(samples):.0f} MB")
    if done < args.clients * args.requests:
        print(f"stopped at the {args.max_seconds:g} s limit before all requests were sent")
    for error in errors[:5]:
        print(f"error: {error}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
