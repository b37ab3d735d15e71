"""``xdna-ep bench-transcribe``: end-to-end transcription time against the engines people use today.

    xdna-ep bench-transcribe [--model tiny.en --model base] [--audio FILE[+FILE...] ...] [--repeats 5]
                             [--threads N] [--wer FOLDER]

In one run, on the same weights and the same clips, with the settings of ``goldens.json`` (greedy,
temperature 0, no timestamps, no conditioning, English), each engine transcribes each clip
``repeats`` times after one warm-up, the engines taking turns run by run (so a change of the
machine's load falls on all of them alike). The median wall time is printed with each xdna-ep
engine's speed-up over faster-whisper of the same compute type, and every engine's tokens are
compared with faster-whisper float32's (``same`` / ``DIFFERENT``):

- ``xdna-ep float32``: the stock graphs on ONNX Runtime's CPU execution provider, the encoder's attention
  as ONNX ``Attention`` (the pipeline of this project: concatenating KV cache, one encoder pass per 30-s
  window);
- ``xdna-ep int8``: the same with the MatMul weights in 8 bits (``xdna_ep.models.quantize``);
- ``faster-whisper float32`` and ``faster-whisper int8``: CTranslate2 on the same packaged weights;
- ``xdna-ep sim`` (with ``--sim``): the simulated NPU. Its wall time is NumPy's, not the NPU's, so
  the modelled NPU device time of the offloaded nodes is printed beside it.

``--audio a.wav+b.flac+c.wav`` joins the clips into one recording with 1 s of silence after each
(a recording over 60 s from the short shared clips). ``--wer FOLDER`` (a folder with
``references.json``, such as the shared clips) prints the word error rate of every engine over the
clips that have a reference text, after lower-casing and removing punctuation.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

GOLDEN_SETTINGS = dict(
    temperature=0.0, beam_size=1, without_timestamps=True, condition_on_previous_text=False, language="en"
)
JOIN = "+"  # --audio a.wav+b.wav: one recording of both
GAP_SECONDS = 1.0  # silence after each joined clip
REFERENCE_ENGINE = "faster-whisper float32"  # every engine's tokens are compared with its


@dataclass(frozen=True)
class TranscribeBenchOptions:
    """What ``bench-transcribe`` measures."""

    models: tuple[str, ...] = ("tiny.en", "base")
    audio: tuple[str, ...] = ()  # clips, or clips joined with "+"; () = jfk.wav shipped with xdna-ep
    repeats: int = 5  # timed runs per engine and clip (median); one warm-up run before them
    sim: bool = False  # also run the simulated NPU (slow on the host: NumPy does the NPU's work)
    threads: int = 0  # CPU threads for every engine; 0 = all cores
    wer_folder: str | None = None  # a folder with references.json: word error rate of every engine

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


def _xdna_tokens(result) -> list[int]:
    return [token for segment in result.segments for token in segment.tokens]


def load_engines(model_name: str, options: TranscribeBenchOptions) -> dict:
    """engine name -> function(samples) -> (text, tokens), each over its model loaded once."""
    import xdna_ep
    from xdna_ep.baselines import faster_whisper_model, faster_whisper_tokens

    def xdna_engine(model):
        def run(audio: np.ndarray) -> tuple[str, list[int]]:
            result = xdna_ep.transcribe(audio, model, **GOLDEN_SETTINGS)
            return result.text, _xdna_tokens(result)

        return run

    def faster_whisper_engine(model):
        return lambda audio: faster_whisper_tokens(model, audio)

    engines = {}
    for compute_type in ("float32", "int8"):
        model = xdna_ep.load_model(model_name, device="cpu", compute_type=compute_type, threads=options.threads)
        engines[f"xdna-ep {compute_type}"] = xdna_engine(model)
    for compute_type in ("float32", "int8"):
        model = faster_whisper_model(model_name, compute_type, cpu_threads=options.threads)
        engines[f"faster-whisper {compute_type}"] = faster_whisper_engine(model)
    if options.sim:
        engines["xdna-ep sim"] = xdna_engine(xdna_ep.load_model(model_name, device="sim", threads=options.threads))
    return engines


def bench_clip(audio: np.ndarray, options: TranscribeBenchOptions, engines: dict) -> list[EngineResult]:
    """Every CPU engine on one recording, taking turns run by run; the simulator once, after them."""
    from xdna_ep.ep import stats

    timed = [name for name in engines if name != "xdna-ep sim"]
    results = {name: EngineResult(name) for name in timed}
    for name in timed:  # warm-up: first-run allocations and lazy initialisation
        results[name].text, results[name].tokens = engines[name](audio)
    for _ in range(options.repeats):
        for name in timed:
            started = time.perf_counter()
            engines[name](audio)
            results[name].times_s.append(time.perf_counter() - started)
    if "xdna-ep sim" in engines:
        before = stats.snapshot()
        started = time.perf_counter()
        text, tokens = engines["xdna-ep sim"](audio)
        wall = time.perf_counter() - started
        used = stats.since(before)["totals"]
        note = (
            f"modelled NPU device time {used['modelled_device_s'] * 1e3:.1f} ms in {used['launches']} launches, "
            f"{used['fallbacks']} fallbacks; host wall time is the simulator's"
        )
        results["xdna-ep sim"] = EngineResult("xdna-ep sim", [wall], tokens, text, note)
    return list(results.values())


def load_recording(spec: str) -> tuple[str, np.ndarray]:
    """(label, samples) of ``--audio`` value ``spec``: one file, or files joined with '+' and 1 s of silence after each."""
    from xdna_ep.audio import SAMPLE_RATE, load_audio

    paths = [Path(part) for part in spec.split(JOIN)]
    if len(paths) == 1:
        return paths[0].name, load_audio(paths[0])
    gap = np.zeros(int(GAP_SECONDS * SAMPLE_RATE), dtype=np.float32)
    samples = np.concatenate([part for path in paths for part in (load_audio(path), gap)])
    return f"{len(paths)} clips joined ({samples.size / SAMPLE_RATE:.1f} s)", samples


def _normalise(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9' ]", " ", text.lower()).split())


def word_error_rates(folder: Path, engines: dict) -> tuple[dict[str, float], int, int]:
    """(engine -> WER over the clips of ``folder/references.json`` that have a text, clips, reference words)."""
    from xdna_ep.audio import load_audio
    from xdna_ep.errors import XdnaError

    try:
        import jiwer
    except ImportError:
        raise XdnaError("--wer needs jiwer: pip install 'xdna-ep[bench]'") from None

    try:
        references = json.loads((folder / "references.json").read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise XdnaError(f"--wer needs a folder with a readable references.json: {error}") from None
    clips = {name: _normalise(entry["text"]) for name, entry in references.items() if entry.get("text")}
    audio = {name: load_audio(folder / name) for name in clips}
    rates = {}
    for engine, run in engines.items():
        hypotheses = [_normalise(run(audio[name])[0]) for name in clips]
        rates[engine] = jiwer.wer(list(clips.values()), hypotheses)
    return rates, len(clips), sum(len(text.split()) for text in clips.values())


def _speedup(result: EngineResult, by_name: dict[str, EngineResult]) -> str:
    """'1.31x faster-whisper int8' for an xdna-ep engine: faster-whisper's median over this engine's."""
    if not result.engine.startswith("xdna-ep "):
        return ""
    compute_type = "int8" if result.engine.endswith("int8") else "float32"
    baseline = by_name[f"faster-whisper {compute_type}"]
    return f"{baseline.median_s / result.median_s:.2f}x fw {compute_type}"


def run_bench(options: TranscribeBenchOptions) -> list[str]:
    return list(iter_bench(options))


def iter_bench(options: TranscribeBenchOptions) -> Iterator[str]:
    """The lines of the report, each as soon as it is measured."""
    import xdna_ep

    specs = list(options.audio) or [str(Path(xdna_ep.__file__).parent / "data" / "jfk.wav")]
    recordings = [load_recording(spec) for spec in specs]
    yield (
        f"bench-transcribe: {os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f}, "
        f"{options.repeats} timed runs per engine after 1 warm-up, engines in turn, median; "
        f"greedy, temperature 0, no timestamps, language en; speed-up = faster-whisper time / xdna-ep time"
    )
    for model_name in options.models:
        engines = load_engines(model_name, options)
        for label, audio in recordings:
            results = bench_clip(audio, options, engines)
            by_name = {result.engine: result for result in results}
            reference = by_name[REFERENCE_ENGINE]
            yield f"{model_name} / {label} (load average {os.getloadavg()[0]:.1f}):"
            yield f"  {'engine':<24} {'median ms':>10} {'speed-up':>16}  tokens vs {REFERENCE_ENGINE}"
            for result in results:
                same = "same" if result.tokens == reference.tokens else f"DIFFERENT: {result.text!r}"
                yield (
                    f"  {result.engine:<24} {result.median_s * 1e3:>10.1f} {_speedup(result, by_name):>16}  {same}"
                    + (f"  ({result.note})" if result.note else "")
                )
        if options.wer_folder:
            rates, n_clips, n_words = word_error_rates(Path(options.wer_folder), engines)
            yield f"{model_name} / word error rate over {n_clips} clips ({n_words} words) of {options.wer_folder}:"
            yield from (f"  {engine:<24} {rate * 100:>6.2f} %" for engine, rate in rates.items())
        del engines  # release this model's engines before loading the next


def configure_parser(parser: argparse.ArgumentParser) -> None:
    defaults = TranscribeBenchOptions()
    parser.add_argument("--model", action="append", help=f"model(s) (default: {', '.join(defaults.models)})")
    parser.add_argument(
        "--audio", action="append",
        help=f"clip(s) to transcribe; a{JOIN}b{JOIN}c joins clips into one recording (default: jfk.wav shipped with xdna-ep)",
    )
    parser.add_argument("--repeats", type=int, default=defaults.repeats, help="timed runs per engine and clip")
    parser.add_argument("--sim", action="store_true", help="also run the simulated NPU (slow on the host)")
    parser.add_argument("--threads", type=int, default=defaults.threads, help="CPU threads per engine (0: all)")
    parser.add_argument("--wer", metavar="FOLDER", help="word error rate of every engine on the clips of FOLDER/references.json")


def run_command(args: argparse.Namespace) -> int:
    options = TranscribeBenchOptions(
        models=tuple(args.model) if args.model else TranscribeBenchOptions().models,
        audio=tuple(args.audio or ()),
        repeats=args.repeats,
        sim=args.sim,
        threads=args.threads,
        wer_folder=args.wer,
    )
    for line in iter_bench(options):
        print(line, flush=True)
    return 0
