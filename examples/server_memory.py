"""Peak resident memory of the audio path and of ``xdna-ep serve``, as the README quotes them.

    python examples/server_memory.py audio MINUTES windowed|whole   # decode + log-mel of every window
    python examples/server_memory.py refuse HOURS [HOURS ...]       # silent 8-kHz FLACs posted 3 times each
    python examples/server_memory.py queue                         # 18 clients post a 5-min FLAC at once

``audio`` writes the bench's recording (jfk.wav and 1.5 s of silence, repeated) to a WAV and reports
the process's peak RSS while it computes every window's log-mel, a block at a time (``windowed``, as
``transcribe()`` does) or over the whole recording (``whole``, as it did before). ``refuse`` and
``queue`` start ``xdna-ep serve --model tiny.en`` on a loopback port, sample its RSS every 2 ms
(/proc, Linux) while posting, and stop it. Files go to a temporary folder that is removed.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import soundfile
import soxr

import xdna_ep
from xdna_ep.audio import HOP_LENGTH, N_FRAMES, SAMPLE_RATE, WindowedLogMel, load_audio, log_mel_spectrogram

JFK = Path(xdna_ep.__file__).parent / "data" / "jfk.wav"
PORT = 9319


def audio_path(minutes: float, mode: str, folder: Path) -> str:
    clip = load_audio(JFK)
    period = np.concatenate([clip, np.zeros(int(1.5 * SAMPLE_RATE), np.float32)])
    path = folder / "long.wav"
    n_samples = int(minutes * 60 * SAMPLE_RATE)  # written a period at a time: the writer holds no recording
    with soundfile.SoundFile(str(path), "w", SAMPLE_RATE, 1, subtype="PCM_16") as sound_file:
        for start in range(0, n_samples, period.size):
            sound_file.write(period[:n_samples - start])
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    if mode == "windowed":
        mel = WindowedLogMel(path, padding=HOP_LENGTH)
        for seek in range(0, mel.n_samples // HOP_LENGTH, N_FRAMES):
            mel.frames(seek, seek + N_FRAMES)
    else:
        whole = log_mel_spectrogram(load_audio(path), padding=HOP_LENGTH)
        for seek in range(0, whole.shape[1], N_FRAMES):
            whole[:, seek:seek + N_FRAMES].sum()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return (f"{mode} {minutes:g} min: peak RSS {peak:.0f} MiB ({peak - before:+.0f} MiB over {before:.0f} MiB), "
            f"{time.perf_counter() - start:.1f} s")


def silent_flac(path: Path, seconds: int, speech: bool = False) -> Path:
    """16-bit FLAC at 8 kHz: silence (jfk.wav first when ``speech``), written 10 minutes at a time."""
    block = np.zeros(8000 * 600, np.float32)
    with soundfile.SoundFile(str(path), "w", 8000, 1, subtype="PCM_16", format="FLAC") as sound_file:
        for start in range(0, seconds * 8000, block.size):
            piece = block[:seconds * 8000 - start].copy()
            if speech and start == 0:
                clip, rate = soundfile.read(str(JFK), dtype="float32")
                resampled = soxr.resample(clip, rate, 8000)
                piece[:resampled.size] = resampled
            sound_file.write(piece)
    return path


class Server:
    """``xdna-ep serve --model tiny.en`` on a loopback port, with its RSS sampled while ``sampling``."""

    def __init__(self) -> None:
        self.url = f"http://127.0.0.1:{PORT}"
        self.process = subprocess.Popen([sys.executable, "-m", "xdna_ep", "serve", "--model", "tiny.en", "--port",
                                         str(PORT), "--log-level", "warning"])
        while True:
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")

    def post(self, path: Path) -> httpx.Response:
        with open(path, "rb") as audio:
            return httpx.post(f"{self.url}/v1/audio/transcriptions", files={"file": (path.name, audio)}, timeout=1200)

    def peak_while(self, work) -> tuple[float, float, object]:
        """(RSS before, peak RSS during ``work()``, its result)."""
        before = self.rss_mib()
        peak, done = [before], threading.Event()

        def sample() -> None:
            while not done.wait(0.002):
                peak[0] = max(peak[0], self.rss_mib())

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            result = work()
        finally:
            done.set()
            sampler.join()
        return before, peak[0], result

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait()


def refuse(hours: list[float], folder: Path) -> list[str]:
    files = [silent_flac(folder / f"{h:g}_hours.flac", int(h * 3600)) for h in hours]
    server = Server()
    lines = []
    try:
        for path in files:
            start = time.perf_counter()
            before, peak, responses = server.peak_while(lambda: [server.post(path) for _ in range(3)])
            each_ms = (time.perf_counter() - start) / 3 * 1000
            answer = responses[-1]
            lines.append(f"{path.name} ({os.path.getsize(path)} bytes): {answer.status_code} "
                         f"{answer.json()['error']['message']!r}; RSS {before:.0f} MiB before, peak {peak:.0f} MiB "
                         f"({peak - before:+.1f} MiB), {each_ms:.0f} ms per request")
    finally:
        server.stop()
    return lines


def queue(folder: Path) -> list[str]:
    path = silent_flac(folder / "5min.flac", 300, speech=True)
    server = Server()
    try:
        server.post(path)  # one request alone first: ONNX Runtime's arenas are allocated then
        start = time.perf_counter()
        with ThreadPoolExecutor(18) as pool:
            before, peak, responses = server.peak_while(lambda: list(pool.map(lambda _: server.post(path), range(18))))
    finally:
        server.stop()
    statuses = sorted(response.status_code for response in responses)
    return [f"{path.name} (5 min), 18 clients at once: statuses {statuses}; RSS {before:.0f} MiB after one request, "
            f"peak {peak:.0f} MiB ({peak - before:+.1f} MiB), {time.perf_counter() - start:.0f} s"]


def main() -> None:
    command, arguments = sys.argv[1], sys.argv[2:]
    with tempfile.TemporaryDirectory() as folder:
        if command == "audio":
            lines = [audio_path(float(arguments[0]), arguments[1], Path(folder))]
        elif command == "refuse":
            lines = refuse([float(h) for h in arguments], Path(folder))
        else:
            lines = queue(Path(folder))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
