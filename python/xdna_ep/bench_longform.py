"""``xdna-ep bench-longform``: VAD and batched decoding on long recordings built from the shared clips.

    xdna-ep bench-longform [--model tiny.en] [--batch-size 8] [--minutes 5] [--audio-dir DIR]

Two recordings, built in memory from speech clips with reference transcripts:

- **gapped**: three clips with 30 s of digital silence, then 30 s of white noise, between them.
  xdna-ep without and with ``vad``: wall time, the segments that overlap a gap (text in the gaps),
  and where each clip's first segment starts against where the clip starts in the recording.
- **long**: every clip with a reference, 1 s of silence after each, repeated until it lasts
  ``minutes``. Sequential xdna-ep (30-s windows with seek, no VAD), batched xdna-ep (``batch_size``),
  and faster-whisper's ``BatchedInferencePipeline`` (same weights, fp32, greedy: ``beam_size=1``,
  ``batch_size``), both with timestamps and text only, one run each in one process: wall time, audio seconds per second, WER against the
  references (lower case, punctuation removed).

Needs the bench extra (faster-whisper, jiwer). The shared clips are read from ``--audio-dir``
(default: ``$XDNA_EP_AUDIO_DIR``, else ``../shared/audio`` beside the project folder).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xdna_ep.audio import SAMPLE_RATE, load_audio

AUDIO_DIR_ENV = "XDNA_EP_AUDIO_DIR"
GAPPED_CLIPS = ("jfk.wav", "librispeech-1995-1837-0001.wav", "2412-153948-0000.flac")
GAP_SECONDS = 30.0


@dataclass(frozen=True)
class LongformBenchOptions:
    """What ``bench-longform`` measures."""

    model: str = "tiny.en"
    batch_size: int = 8  # chunks per batch, for xdna-ep and faster-whisper alike
    minutes: float = 5.0  # length of the long recording
    audio_dir: str | None = None  # shared clips with references.json; None: $XDNA_EP_AUDIO_DIR or ../shared/audio
    threads: int = 0  # CPU threads for faster-whisper; 0 = all cores

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not self.minutes > 0:
            raise ValueError(f"minutes must be > 0, got {self.minutes}")

    def clips_folder(self) -> Path:
        if self.audio_dir:
            return Path(self.audio_dir)
        if os.environ.get(AUDIO_DIR_ENV):
            return Path(os.environ[AUDIO_DIR_ENV])
        return Path(__file__).resolve().parents[2].parent / "shared" / "audio"


def normalise(text: str) -> str:
    """Lower case, punctuation removed, one space between words (what the WER compares)."""
    return " ".join(re.sub(r"[^a-z0-9' ]", " ", text.lower()).split())


def gapped_recording(folder: Path) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """GAPPED_CLIPS with 30 s of silence, then 30 s of white noise (std 0.05, seed 0), between them;
    and each clip's (start, end) in seconds."""
    clips = [load_audio(folder / name) for name in GAPPED_CLIPS]
    silence = np.zeros(round(GAP_SECONDS * SAMPLE_RATE), dtype=np.float32)
    noise = (np.random.default_rng(0).standard_normal(silence.size) * 0.05).astype(np.float32)
    parts = [clips[0], silence, clips[1], noise, clips[2]]
    spans, position = [], 0
    for index, part in enumerate(parts):
        if index % 2 == 0:
            spans.append((position / SAMPLE_RATE, (position + part.size) / SAMPLE_RATE))
        position += part.size
    return np.concatenate(parts), spans


def long_recording(folder: Path, minutes: float) -> tuple[np.ndarray, str]:
    """Every clip of references.json that has a text (jfk.flac left out: the same speech as jfk.wav),
    1 s of silence after each, repeated until ``minutes`` long; and the reference text of it all."""
    references = json.loads((folder / "references.json").read_text())
    names = sorted(name for name, entry in references.items() if entry.get("text") and name != "jfk.flac")
    pause = np.zeros(SAMPLE_RATE, dtype=np.float32)
    one_pass = [(load_audio(folder / name), references[name]["text"]) for name in names]
    parts, texts, size = [], [], 0
    while size < minutes * 60 * SAMPLE_RATE:
        for samples, text in one_pass:
            parts += [samples, pause]
            texts.append(text)
            size += samples.size + pause.size
    return np.concatenate(parts), " ".join(texts)


def _timed(run):
    started = time.perf_counter()
    output = run()
    return time.perf_counter() - started, output


def bench_vad(model, folder: Path) -> list[str]:
    from xdna_ep.transcribe import TranscribeOptions, transcribe

    samples, spans = gapped_recording(folder)
    duration = samples.size / SAMPLE_RATE
    lines = [f"gapped recording: {', '.join(GAPPED_CLIPS)} with {GAP_SECONDS:.0f} s of silence, then of noise, "
             f"between them ({duration:.1f} s); xdna-ep {model.name} on {model.device}"]
    lines.append(f"  {'run':<10} {'wall s':>8} {'vs no VAD':>10} {'segments':>9} {'in gaps':>8}  clip starts -> first segment")
    baseline = None
    for vad in (False, True):
        seconds, result = _timed(lambda: transcribe(model, samples, TranscribeOptions(vad=vad)))
        baseline = baseline or seconds
        in_gaps = [s for s in result.segments if not any(a - 0.5 <= s.start < s.end <= b + 0.5 for a, b in spans)]
        starts = []
        for start, _ in spans:
            later = [s.start for s in result.segments if s.start >= start - 0.5]
            starts.append(f"{start:.2f}->{later[0]:.2f}" if later else f"{start:.2f}->none")
        lines.append(
            f"  {'VAD' if vad else 'no VAD':<10} {seconds:>8.2f} {seconds / baseline:>9.2f}x "
            f"{len(result.segments):>9} {len(in_gaps):>8}  {' '.join(starts)}"
        )
        for segment in in_gaps:
            lines.append(f"    in a gap: [{segment.start:.2f} - {segment.end:.2f}] {segment.text.strip()!r}")
    return lines


def bench_batched(model, options: LongformBenchOptions, folder: Path) -> list[str]:
    import jiwer
    from faster_whisper import BatchedInferencePipeline

    from xdna_ep.baselines import faster_whisper_model
    from xdna_ep.transcribe import TranscribeOptions, transcribe

    samples, reference = long_recording(folder, options.minutes)
    duration = samples.size / SAMPLE_RATE
    reference = normalise(reference)
    batch = options.batch_size
    runs = {"xdna-ep sequential": lambda: transcribe(model, samples, TranscribeOptions()).text}
    threads = options.threads or os.cpu_count() or 1  # as many as ONNX Runtime uses for xdna-ep
    pipeline = BatchedInferencePipeline(faster_whisper_model(options.model, "float32", cpu_threads=threads))
    for without_timestamps in (False, True):
        kind = "text only" if without_timestamps else "timestamps"
        batched_options = TranscribeOptions.from_kwargs(batch_size=batch, without_timestamps=without_timestamps)
        runs[f"xdna-ep batched {batch}, {kind}"] = (
            lambda batched_options=batched_options: transcribe(model, samples, batched_options).text
        )

        def faster_whisper_batched(without_timestamps: bool = without_timestamps) -> str:
            segments, _ = pipeline.transcribe(
                samples, batch_size=batch, beam_size=1, language="en", without_timestamps=without_timestamps
            )
            return "".join(segment.text for segment in segments)

        runs[f"faster-whisper batched {batch}, {kind}"] = faster_whisper_batched
    lines = [f"long recording: {duration:.1f} s ({duration / 60:.1f} min), the referenced shared clips repeated with "
             f"1 s pauses; {options.model}, greedy; one run each"]
    lines.append(f"  {'engine':<38} {'wall s':>8} {'audio s/s':>10} {'vs sequential':>14} {'WER':>7}")
    baseline = None
    for label, run in runs.items():
        seconds, text = _timed(run)
        baseline = baseline or seconds
        wer = jiwer.wer(reference, normalise(text))
        lines.append(f"  {label:<38} {seconds:>8.2f} {duration / seconds:>10.1f} {baseline / seconds:>13.2f}x {wer:>7.4f}")
    return lines


def configure_parser(parser: argparse.ArgumentParser) -> None:
    defaults = LongformBenchOptions()
    parser.add_argument("--model", default=defaults.model, help=f"model (default: {defaults.model})")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="chunks per batch")
    parser.add_argument("--minutes", type=float, default=defaults.minutes, help="length of the long recording")
    parser.add_argument("--audio-dir", help=f"shared clips (default: ${AUDIO_DIR_ENV} or ../shared/audio)")
    parser.add_argument("--threads", type=int, default=defaults.threads, help="faster-whisper CPU threads (0: all)")
    parser.add_argument("--skip-vad", action="store_true", help="only the batched comparison")


def run_command(args: argparse.Namespace) -> int:
    import xdna_ep

    options = LongformBenchOptions(
        model=args.model, batch_size=args.batch_size, minutes=args.minutes, audio_dir=args.audio_dir,
        threads=args.threads,
    )
    folder = options.clips_folder()
    model = xdna_ep.load_model(options.model, device="cpu")
    print(f"bench-longform: {os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f}", flush=True)
    if not args.skip_vad:
        for line in bench_vad(model, folder):
            print(line, flush=True)
    for line in bench_batched(model, options, folder):
        print(line, flush=True)
    return 0
