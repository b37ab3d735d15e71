"""``xdna-ep bench-transcribe``: end-to-end transcription time against the engines people use today.

    xdna-ep bench-transcribe [--model tiny.en --model base] [--audio FILE ...] [--repeats 5]

In one run, on the same weights and the same clips, with the settings of ``goldens.json`` (greedy,
temperature 0, no timestamps, no conditioning, English), each engine transcribes each clip
``repeats`` times after one warm-up; the median wall time is printed with its ratio to xdna-ep on the
CPU device, and every engine's tokens are compared with xdna-ep's:

- ``xdna-ep cpu``: the stock graphs on ONNX Runtime's CPU execution provider (the pipeline of this
  project: concatenating KV cache, one encoder pass per 30-s window);
- ``faster-whisper fp32`` and ``faster-whisper int8``: CTranslate2 on the same packaged weights;
- ``xdna-ep sim`` (with ``--sim``): the simulated NPU. Its wall time is NumPy's, not the NPU's, so
  the modelled NPU device time of the offloaded nodes is printed beside it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

GOLDEN_SETTINGS = dict(
    temperature=0.0, beam_size=1, without_timestamps=True, condition_on_previous_text=False, language="en"
)


@dataclass(frozen=True)
class TranscribeBenchOptions:
    """What ``bench-transcribe`` measures."""

    models: tuple[str, ...] = ("tiny.en", "base")
    audio: tuple[str, ...] = ()  # clips; () = jfk.wav shipped with xdna-ep
    repeats: int = 5  # timed runs per engine and clip (median); one warm-up run before them
    sim: bool = False  # also run the simulated NPU (slow on the host: NumPy does the NPU's work)
    threads: int = 0  # CPU threads for every engine; 0 = all cores

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError("bench-transcribe needs at least one model")
        if self.repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {self.repeats}")
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0, got {self.threads}")


@dataclass
class EngineResult:
    """One engine on one clip."""

    engine: str
    times_s: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    note: str = ""

    @property
    def median_s(self) -> float:
        return statistics.median(self.times_s)


def _time(run, repeats: int) -> tuple[list[float], tuple]:
    output = run()  # warm-up: first-run allocations and lazy initialisation
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        output = run()
        times.append(time.perf_counter() - started)
    return times, output


def _xdna_tokens(result) -> list[int]:
    return [token for segment in result.segments for token in segment.tokens]


def bench_clip(audio_path: Path, options: TranscribeBenchOptions, engines: dict) -> list[EngineResult]:
    """Every engine on one clip; ``engines`` holds the loaded models (loaded once per model)."""
    import xdna_ep
    from xdna_ep.audio import load_audio
    from xdna_ep.baselines import faster_whisper_tokens
    from xdna_ep.ep import stats

    audio = load_audio(audio_path)
    results = []
    cpu_model = engines["xdna-ep cpu"]
    times, result = _time(lambda: xdna_ep.transcribe(audio, cpu_model, **GOLDEN_SETTINGS), options.repeats)
    results.append(EngineResult("xdna-ep cpu", times, _xdna_tokens(result), result.text))
    for compute_type in ("float32", "int8"):
        label = f"faster-whisper {'fp32' if compute_type == 'float32' else compute_type}"
        model = engines[label]
        times, (text, tokens) = _time(lambda: faster_whisper_tokens(model, audio), options.repeats)
        results.append(EngineResult(label, times, tokens, text))
    if options.sim:
        sim_model = engines["xdna-ep sim"]
        before = stats.snapshot()
        started = time.perf_counter()
        result = xdna_ep.transcribe(audio, sim_model, **GOLDEN_SETTINGS)
        wall = time.perf_counter() - started
        used = stats.since(before)["totals"]
        note = (
            f"modelled NPU device time {used['modelled_device_s'] * 1e3:.1f} ms in {used['launches']} launches, "
            f"{used['fallbacks']} fallbacks; host wall time is the simulator's"
        )
        results.append(EngineResult("xdna-ep sim", [wall], _xdna_tokens(result), result.text, note))
    return results


def load_engines(model_name: str, options: TranscribeBenchOptions) -> dict:
    import xdna_ep
    from xdna_ep.baselines import faster_whisper_model

    engines = {
        "xdna-ep cpu": xdna_ep.load_model(model_name, device="cpu"),
        "faster-whisper fp32": faster_whisper_model(model_name, "float32", cpu_threads=options.threads),
        "faster-whisper int8": faster_whisper_model(model_name, "int8", cpu_threads=options.threads),
    }
    if options.sim:
        engines["xdna-ep sim"] = xdna_ep.load_model(model_name, device="sim")
    return engines


def run_bench(options: TranscribeBenchOptions) -> list[str]:
    import xdna_ep

    clips = [Path(p) for p in options.audio] or [Path(xdna_ep.__file__).parent / "data" / "jfk.wav"]
    lines = [
        f"bench-transcribe: {os.cpu_count()} CPU cores, {options.repeats} timed runs after 1 warm-up, median; "
        f"greedy, temperature 0, no timestamps, language en"
    ]
    for model_name in options.models:
        engines = load_engines(model_name, options)
        for clip in clips:
            results = bench_clip(clip, options, engines)
            reference = results[0]
            lines.append(f"{model_name} / {clip.name}:")
            lines.append(f"  {'engine':<22} {'median ms':>10} {'vs xdna-ep cpu':>15}  tokens")
            for result in results:
                same = "same" if result.tokens == reference.tokens else f"DIFFER: {result.text!r}"
                ratio = result.median_s / reference.median_s
                lines.append(
                    f"  {result.engine:<22} {result.median_s * 1e3:>10.1f} {ratio:>14.2f}x  {same}"
                    + (f"  ({result.note})" if result.note else "")
                )
    return lines


def configure_parser(parser: argparse.ArgumentParser) -> None:
    defaults = TranscribeBenchOptions()
    parser.add_argument("--model", action="append", help=f"model(s) (default: {', '.join(defaults.models)})")
    parser.add_argument("--audio", action="append", help="clip(s) to transcribe (default: jfk.wav shipped with xdna-ep)")
    parser.add_argument("--repeats", type=int, default=defaults.repeats, help="timed runs per engine and clip")
    parser.add_argument("--sim", action="store_true", help="also run the simulated NPU (slow on the host)")
    parser.add_argument("--threads", type=int, default=defaults.threads, help="CPU threads per engine (0: all)")


def run_command(args: argparse.Namespace) -> int:
    options = TranscribeBenchOptions(
        models=tuple(args.model) if args.model else TranscribeBenchOptions().models,
        audio=tuple(args.audio or ()),
        repeats=args.repeats,
        sim=args.sim,
        threads=args.threads,
    )
    for line in run_bench(options):
        print(line, flush=True)
    return 0
