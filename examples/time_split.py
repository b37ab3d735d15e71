"""Where a CPU transcription's time goes, as the README quotes it: the ``timing`` of ``xdna_ep.transcribe``.

    python examples/time_split.py MODEL COMPUTE_TYPE AUDIO[+AUDIO...] [RUNS]
    python examples/time_split.py tiny.en float32 ../shared/audio/jfk.wav 5

One model in a process of its own (no other engine's threads beside it), the bench's settings (greedy,
temperature 0, no timestamps, English), one warm-up, then RUNS (default 5) timed transcriptions. Prints
the run of median wall time with its split: audio decoding, log-mel, encoder, decoding (every decoder
step and the token choice), and the process's load average. ``a.wav+b.flac`` joins the clips with 1 s
of silence after each, as ``xdna-ep bench-transcribe --audio`` does.
"""

from __future__ import annotations

import os
import sys
import time

import xdna_ep
from xdna_ep.bench_transcribe import GOLDEN_SETTINGS, load_recording


def main(argv: list[str]) -> int:
    if len(argv) not in (3, 4):
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    name, compute_type, spec = argv[:3]
    runs = int(argv[3]) if len(argv) == 4 else 5
    label, audio = load_recording(spec)
    model = xdna_ep.load_model(name, device="cpu", compute_type=compute_type)
    xdna_ep.transcribe(audio, model, **GOLDEN_SETTINGS)  # warm-up
    results = []
    for _ in range(runs):
        started = time.perf_counter()
        result = xdna_ep.transcribe(audio, model, **GOLDEN_SETTINGS)
        results.append((time.perf_counter() - started, result))
    results.sort(key=lambda item: item[0])
    wall, result = results[len(results) // 2]
    split = ", ".join(f"{part} {seconds * 1e3:.1f}" for part, seconds in result.timing.items() if part != "total")
    print(
        f"{name} {compute_type} {label}: {wall * 1e3:.1f} ms (median of {runs}): {split} ms; "
        f"{result.stats['windows']} windows, {result.stats['sampled_tokens']} tokens; "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
