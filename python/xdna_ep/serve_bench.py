"""``xdna-ep bench-serve``: load on the HTTP server, and a check that no answer is lost or mixed up.

Starts ``xdna-ep serve`` in a subprocess (or uses ``--url``), transcribes every clip once with one
client to get the reference texts, then for each client count N runs N concurrent clients sending M
requests each (client i's request j carries clip ``(i + j) mod n_clips``, so neighbouring requests
carry different clips), within a time limit. Prints throughput, latency percentiles, errors, and how
many answers differ from the reference text of their clip.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_CLIENTS = (1, 4, 16)
DEFAULT_REQUESTS = 5  # per client
DEFAULT_TIME_LIMIT_S = 300.0  # per client count: no request is sent after it
DEFAULT_ENDPOINT = "/v1/audio/transcriptions"
STARTUP_TIMEOUT_S = 300.0  # the first start may export the model
REQUEST_TIMEOUT_S = 600.0
PACKAGED_SAMPLE = Path(__file__).resolve().parent / "data" / "jfk.wav"


@dataclass
class Clip:
    name: str
    content: bytes
    seconds: float
    reference: str = ""  # text of the sequential run


@dataclass
class LoadResult:
    """What one client count produced."""

    clients: int
    planned: int
    latencies: list[float] = field(default_factory=list)  # seconds of each answered request
    audio_seconds: float = 0.0  # of the answered requests
    errors: Counter[str] = field(default_factory=Counter)  # HTTP status or exception name -> count
    mismatched: list[str] = field(default_factory=list)  # "clip: got ..." for answers unlike the reference
    not_sent: int = 0  # requests left when the time limit passed
    wall_seconds: float = 0.0

    @property
    def answered(self) -> int:
        return len(self.latencies)


class RequestFailed(Exception):
    """The server answered with an error status."""


async def _request(client: Any, url: str, clip: Clip) -> str:
    """POST one clip (json answer) and return its text; RequestFailed('HTTP <status>: <message>') on an error."""
    fields = {"model": "whisper-1"} if url.endswith(DEFAULT_ENDPOINT) else {}
    response = await client.post(url, files={"file": (clip.name, clip.content)}, data=fields)
    if response.status_code != 200:
        raise RequestFailed(f"HTTP {response.status_code}: {response.text[:200]}")
    return response.json()["text"]


async def reference_run(base_url: str, endpoint: str, clips: list[Clip], headers: dict[str, str]) -> float:
    """Transcribe each clip once, one at a time; sets ``clip.reference``. Returns the wall seconds."""
    import httpx

    start = time.perf_counter()
    async with httpx.AsyncClient(headers=headers, timeout=REQUEST_TIMEOUT_S) as client:
        for clip in clips:
            clip.reference = await _request(client, base_url + endpoint, clip)
    return time.perf_counter() - start


async def load_run(
    base_url: str, endpoint: str, clips: list[Clip], headers: dict[str, str], n_clients: int, n_requests: int,
    time_limit_s: float,
) -> LoadResult:
    """``n_clients`` concurrent clients, ``n_requests`` each, none sent after ``time_limit_s``."""
    import httpx

    result = LoadResult(clients=n_clients, planned=n_clients * n_requests)
    deadline = time.perf_counter() + time_limit_s
    limits = httpx.Limits(max_connections=n_clients, max_keepalive_connections=n_clients)

    async def one_client(client: httpx.AsyncClient, index: int) -> None:
        for j in range(n_requests):
            if time.perf_counter() > deadline:
                result.not_sent += n_requests - j
                return
            clip = clips[(index + j) % len(clips)]
            sent = time.perf_counter()
            try:
                text = await _request(client, base_url + endpoint, clip)
            except RequestFailed as error:
                result.errors[str(error).split(":")[0]] += 1
                continue
            except httpx.HTTPError as error:
                result.errors[type(error).__name__] += 1
                continue
            result.latencies.append(time.perf_counter() - sent)
            result.audio_seconds += clip.seconds
            if text != clip.reference:
                result.mismatched.append(f"{clip.name}: got {text[:60]!r}")

    start = time.perf_counter()
    async with httpx.AsyncClient(headers=headers, timeout=REQUEST_TIMEOUT_S, limits=limits) as client:
        await asyncio.gather(*(one_client(client, index) for index in range(n_clients)))
    result.wall_seconds = time.perf_counter() - start
    return result


TABLE_HEADER = (
    f"{'clients':>7} {'sent':>5} {'ok':>5} {'errors':>6} {'mixed':>5} {'wall s':>7} {'req/s':>6} "
    f"{'audio s/s':>9} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7}"
)


def format_row(result: LoadResult) -> str:
    """One line under TABLE_HEADER: mixed = answers unlike their clip's reference text."""
    import numpy as np

    sent = result.planned - result.not_sent
    if result.latencies:
        p50, p95, p99 = (float(np.percentile(result.latencies, q)) * 1000 for q in (50, 95, 99))
    else:
        p50 = p95 = p99 = float("nan")
    return (
        f"{result.clients:>7} {sent:>5} {result.answered:>5} {sum(result.errors.values()):>6} "
        f"{len(result.mismatched):>5} {result.wall_seconds:>7.2f} {result.answered / result.wall_seconds:>6.2f} "
        f"{result.audio_seconds / result.wall_seconds:>9.1f} {p50:>7.0f} {p95:>7.0f} {p99:>7.0f}"
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(args: argparse.Namespace, max_queue: int, log_path: Path) -> tuple[subprocess.Popen, str]:
    """``xdna-ep serve`` on a free loopback port; returns (process, base URL) once /health answers 200 (ready)."""
    import httpx

    from xdna_ep.errors import XdnaError

    port = _free_port()
    command = [
        sys.executable, "-m", "xdna_ep", "serve", "--port", str(port), "--model", args.model, "--device", args.device,
        "--max-queue", str(max_queue), "--log-level", "warning",
    ]
    print("server: xdna-ep", " ".join(command[3:]), flush=True)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise XdnaError(f"the server exited with {process.returncode}:\n{log_path.read_text()}")
        try:
            if httpx.get(f"{base_url}/health", timeout=1).status_code == 200:  # 503 while the model loads
                return process, base_url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.terminate()
    raise XdnaError(f"the server did not answer within {STARTUP_TIMEOUT_S:g} s")


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (1 min) {five:.1f} (5 min)"


def load_clips(paths: list[Path]) -> list[Clip]:
    from xdna_ep.audio import SAMPLE_RATE, load_audio

    return [Clip(path.name, path.read_bytes(), load_audio(path).size / SAMPLE_RATE) for path in paths]


def configure_parser(parser: argparse.ArgumentParser) -> None:
    from xdna_ep.model import DEVICES
    from xdna_ep.models.registry import DEFAULT_MODEL

    parser.add_argument("--audio", nargs="+", type=Path, help=f"clips to send (default: {PACKAGED_SAMPLE.name})")
    parser.add_argument(
        "--clients", nargs="+", type=int, default=list(DEFAULT_CLIENTS),
        help="concurrent client counts, one run each (default: %(default)s)",
    )
    parser.add_argument("--requests", type=int, default=DEFAULT_REQUESTS, help="requests per client (default: %(default)s)")
    parser.add_argument(
        "--time-limit", type=float, default=DEFAULT_TIME_LIMIT_S,
        help="seconds per client count after which no request is sent (default: %(default)g)",
    )
    parser.add_argument("--endpoint", default=DEFAULT_ENDPOINT, choices=(DEFAULT_ENDPOINT, "/inference", "/transcribe"))
    parser.add_argument("--url", help="an already running server (default: start one)")
    parser.add_argument("--api-key", default=os.environ.get("XDNA_EP_API_KEY"), help="bearer key for --url")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="model of the started server (default: %(default)s)")
    parser.add_argument("--device", default="cpu", choices=DEVICES, help="device of the started server (default: %(default)s)")


def run_command(args: argparse.Namespace) -> int:
    """Run the benchmark; exit status 1 when any request failed or was answered with another clip's text."""
    import httpx

    from xdna_ep.errors import XdnaError

    paths = args.audio or [PACKAGED_SAMPLE]
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        raise XdnaError(f"audio file not found: {', '.join(missing)}")
    if min(args.clients) < 1 or args.requests < 1 or args.time_limit <= 0:
        raise XdnaError("--clients and --requests must be >= 1 and --time-limit > 0")
    clips = load_clips(paths)
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}

    process = None
    log_folder = tempfile.TemporaryDirectory(prefix="xdna-ep-bench-serve-")
    try:
        if args.url:
            base_url = args.url.rstrip("/")
        else:
            # room for every client in the queue: this measures throughput, the 503 path is tested elsewhere
            process, base_url = start_server(args, max(args.clients), Path(log_folder.name) / "server.log")
        total_audio = sum(clip.seconds for clip in clips)
        print(f"POST {base_url}{args.endpoint}: {len(clips)} clips, {total_audio:.1f} s of audio", flush=True)
        print(f"machine: {os.cpu_count()} cores, {_load()} at the start", flush=True)
        try:
            sequential = asyncio.run(reference_run(base_url, args.endpoint, clips, headers))
        except (RequestFailed, httpx.HTTPError) as error:
            raise XdnaError(f"the reference run failed: {error}") from None
        print(f"reference: each clip once, one client: {sequential:.2f} s", flush=True)
        print(TABLE_HEADER, flush=True)
        results = []
        for n_clients in args.clients:
            result = asyncio.run(
                load_run(base_url, args.endpoint, clips, headers, n_clients, args.requests, args.time_limit)
            )
            results.append(result)
            print(format_row(result), flush=True)
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=60)
        log_folder.cleanup()
    print(f"machine: {_load()} at the end (other work on the machine slows every row)")
    problems = 0
    for result in results:
        for error, count in sorted(result.errors.items()):
            print(f"{result.clients} clients: {count} x {error}")
        for mismatch in result.mismatched:
            print(f"{result.clients} clients: answer differs from the reference: {mismatch}")
        problems += sum(result.errors.values()) + len(result.mismatched)
    return 1 if problems else 0
