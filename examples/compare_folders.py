"""Two or more model folders (or model names) transcribing one recording in turn, in one process.

    python examples/compare_folders.py AUDIO[+AUDIO...] COMPUTE_TYPE FOLDER FOLDER [...] [--repeats N]
    python examples/compare_folders.py ../shared/audio/jfk.wav float32 base /tmp/base-variant --repeats 20

How a graph or quantization change is measured on this noisy 2-core machine: every folder is loaded
once on the CPU, transcribes once to warm up, then the folders take turns run by run (so a change of
the machine's load falls on all of them alike), with the bench's settings (greedy, temperature 0, no
timestamps, English). Prints each folder's median wall time, its median run-by-run ratio to the first
folder, and whether its tokens equal the first folder's.

A folder written ``plain:FOLDER`` is loaded without the CPU session's in-memory graph rewrite (the
encoder's attention chains left as the file has them instead of ONNX ``Attention`` nodes,
``graph_passes/onnx_attention.py``): ``plain:base base`` measures that rewrite.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

import xdna_ep
from xdna_ep import model as model_module
from xdna_ep.bench_transcribe import GOLDEN_SETTINGS, load_recording

PLAIN = "plain:"


def load(folder: str, compute_type: str):
    """The model of ``folder``; with the ``plain:`` prefix, its CPU sessions load the files as they are."""
    if not folder.startswith(PLAIN):
        return xdna_ep.load_model(folder, device="cpu", compute_type=compute_type)
    rewrite = model_module._cpu_graph
    model_module._cpu_graph = str  # the path itself: what ONNX Runtime loads without the rewrite
    try:
        return xdna_ep.load_model(folder[len(PLAIN):], device="cpu", compute_type=compute_type)
    finally:
        model_module._cpu_graph = rewrite


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("audio", help="a clip, or clips joined with '+'")
    parser.add_argument("compute_type", choices=("float32", "int8"))
    parser.add_argument("folders", nargs="+", help="model folders or names; the first is the baseline")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    label, audio = load_recording(args.audio)
    models, tokens, times = {}, {}, {}
    for folder in args.folders:
        models[folder] = load(folder, args.compute_type)
        result = xdna_ep.transcribe(audio, models[folder], **GOLDEN_SETTINGS)  # warm-up
        tokens[folder] = [token for segment in result.segments for token in segment.tokens]
        times[folder] = []
    for _ in range(args.repeats):
        for folder, model in models.items():
            started = time.perf_counter()
            xdna_ep.transcribe(audio, model, **GOLDEN_SETTINGS)
            times[folder].append(time.perf_counter() - started)
    baseline = np.array(times[args.folders[0]])
    for folder in args.folders:
        runs = np.array(times[folder])
        same = "same tokens" if tokens[folder] == tokens[args.folders[0]] else "DIFFERENT tokens"
        print(
            f"{label} {args.compute_type} {folder}: median {np.median(runs) * 1e3:.1f} ms over {args.repeats} runs, "
            f"{np.median(runs / baseline):.3f}x the first folder run by run, {same}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
