"""The segment API under load: `segflow serve` in its own process, a load generator in this one.

The generator keeps `concurrency` HTTP/1.1 keep-alive connections busy for `seconds` (asyncio streams: a Python
client that costs far less per request than the server, so the server is what is measured), each request a
lookup of a random known id, and reports requests/s and latency percentiles of the successful ones.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def _worker(
    host: str, port: int, requests: list[bytes], deadline: float, latencies: list[float], errors: list[str]
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < deadline:
            request = random.choice(requests)
            started = time.perf_counter()
            writer.write(request)
            await writer.drain()
            status_line = await reader.readline()
            length = 0
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                name, _, value = line.decode("latin-1").partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            await reader.readexactly(length)
            status = status_line.split(b" ", 2)[1] if status_line else b"closed"
            if status == b"200":
                latencies.append(time.perf_counter() - started)
            else:
                errors.append(status.decode())
                if status == b"closed":
                    return
    finally:
        writer.close()


def run_load(
    base_url: str, key: str, ids: list[str], seconds: float, concurrency: int, batch: int = 0
) -> dict[str, Any]:
    """Single lookups (GET /v1/profiles/{id}) or, with `batch`, POST /v1/profiles:batch of `batch` random ids.

    Returns:
        requests, profiles_per_s, requests_per_s, p50_ms, p99_ms, errors (by status).
    """
    host, _, port = base_url.split("//", 1)[1].rstrip("/").partition(":")
    head = f"Host: {host}\r\nAuthorization: Bearer {key}\r\n"
    rng = random.Random(7)
    if batch:
        requests = []
        for _ in range(200):
            body = json.dumps({"ids": rng.sample(ids, min(batch, len(ids)))}).encode()
            requests.append(
                f"POST /v1/profiles:batch HTTP/1.1\r\n{head}Content-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
    else:
        requests = [
            f"GET /v1/profiles/{i} HTTP/1.1\r\n{head}\r\n".encode() for i in rng.sample(ids, min(5000, len(ids)))
        ]
    latencies: list[float] = []
    errors: list[str] = []

    async def main() -> None:
        deadline = time.perf_counter() + seconds
        await asyncio.gather(
            *(_worker(host, int(port), requests, deadline, latencies, errors) for _ in range(concurrency))
        )

    started = time.perf_counter()
    asyncio.run(main())
    elapsed = time.perf_counter() - started
    codes: dict[str, int] = {}
    for code in errors:
        codes[code] = codes.get(code, 0) + 1
    return {
        "requests": len(latencies),
        "requests_per_s": round(len(latencies) / elapsed, 1),
        "profiles_per_s": round(len(latencies) * (batch or 1) / elapsed, 1),
        "p50_ms": round(_percentile(latencies, 0.50) * 1000, 2),
        "p99_ms": round(_percentile(latencies, 0.99) * 1000, 2),
        "concurrency": concurrency,
        "batch": batch or 1,
        "errors": codes,
    }


def start_server(port: int, env: dict[str, str] | None = None, log: Path | None = None) -> subprocess.Popen:
    """`segflow serve` on `port`, returned once /readyz answers 200."""
    out = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115 - the child writes to it
    process = subprocess.Popen(
        [sys.executable, "-m", "segflow.local.cli", "serve", "--port", str(port)],
        env={**os.environ, **(env or {})},
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    if log:
        out.close()  # the child holds its own descriptor
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"segflow serve exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
                if response.status == 200:
                    return process
        except OSError:
            time.sleep(0.3)
    stop_server(process)
    raise TimeoutError("segflow serve did not become ready within 60 s")


def stop_server(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
