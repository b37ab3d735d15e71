"""``xdna-ep bench-agreement``: beam search and word timestamps against faster-whisper on the same weights.

    xdna-ep bench-agreement --audio CLIP [--audio CLIP ...] [--model tiny.en --model base]

Each engine transcribes each clip once with its defaults for beam search (beam 5, patience 1,
temperature fallback, conditioning on previous text), English, word timestamps on, no VAD:

- tokens: whether xdna-ep's tokens (all segments) equal faster-whisper's, and each engine's word error
  rate against the clip's reference transcript (``references.json`` beside the clips, when it has one);
- words: whether both engines give the same words (text, in order), and the median and largest
  absolute difference of the word start and end times;
- the wall time of xdna-ep with beam 5 and with greedy decoding (``beam_size=1``), on the CPU.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SETTINGS = dict(language="en", word_timestamps=True)  # both engines: everything else at its default


@dataclass(frozen=True)
class AgreementOptions:
    """What ``bench-agreement`` compares."""

    models: tuple[str, ...] = ("tiny.en", "base")
    audio: tuple[str, ...] = ()  # clips; () = jfk.wav shipped with xdna-ep

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError("bench-agreement needs at least one model")


@dataclass(frozen=True)
class ClipAgreement:
    """xdna-ep against faster-whisper on one clip."""

    clip: str
    same_tokens: bool
    xdna_wer: float | None  # None: the clip has no reference transcript
    faster_whisper_wer: float | None
    same_words: bool
    n_words: int
    start_differences: list[float]  # |xdna-ep - faster-whisper| per word, seconds (same words only)
    end_differences: list[float]
    beam_s: float  # xdna-ep wall time, beam 5
    greedy_s: float  # xdna-ep wall time, beam 1


def normalise(text: str) -> str:
    """Lower case, punctuation removed, single spaces: what a word error rate compares."""
    return " ".join(re.sub(r"[^a-z0-9' ]", " ", text.lower()).split())


def word_error_rate(reference: str, hypothesis: str) -> float:
    import jiwer

    return float(jiwer.wer(normalise(reference), normalise(hypothesis)))


def _references(clips: list[Path]) -> dict[str, str]:
    texts: dict[str, str] = {}
    for folder in {clip.parent for clip in clips}:
        path = folder / "references.json"
        if path.is_file():
            for name, entry in json.loads(path.read_text()).items():
                if entry.get("text"):
                    texts[str(folder / name)] = entry["text"]
    return texts


def compare_clip(clip: Path, model: Any, faster_whisper: Any, reference: str | None) -> ClipAgreement:
    import xdna_ep
    from xdna_ep.audio import load_audio

    audio = load_audio(clip)
    started = time.perf_counter()
    ours = xdna_ep.transcribe(audio, model, **SETTINGS)
    beam_s = time.perf_counter() - started
    started = time.perf_counter()
    xdna_ep.transcribe(audio, model, beam_size=1, **SETTINGS)
    greedy_s = time.perf_counter() - started
    segments, _ = faster_whisper.transcribe(audio, beam_size=5, vad_filter=False, **SETTINGS)
    theirs = list(segments)

    our_words = [word for segment in ours.segments for word in segment.words or []]
    their_words = [word for segment in theirs for word in segment.words or []]
    same_words = [w.word for w in our_words] == [w.word for w in their_words]
    pairs = list(zip(our_words, their_words)) if same_words else []
    their_text = "".join(segment.text for segment in theirs).strip()
    return ClipAgreement(
        clip=clip.name,
        same_tokens=[t for s in ours.segments for t in s.tokens] == [t for s in theirs for t in s.tokens],
        xdna_wer=word_error_rate(reference, ours.text) if reference else None,
        faster_whisper_wer=word_error_rate(reference, their_text) if reference else None,
        same_words=same_words,
        n_words=len(our_words),
        start_differences=[abs(ours_.start - theirs_.start) for ours_, theirs_ in pairs],
        end_differences=[abs(ours_.end - theirs_.end) for ours_, theirs_ in pairs],
        beam_s=beam_s,
        greedy_s=greedy_s,
    )


def _seconds(values: list[float]) -> str:
    if not values:
        return "-"
    return f"median {statistics.median(values):.3f} s, max {max(values):.3f} s"


def run_bench(options: AgreementOptions) -> list[str]:
    import xdna_ep
    from xdna_ep.baselines import faster_whisper_model

    clips = [Path(p) for p in options.audio] or [Path(xdna_ep.__file__).parent / "data" / "jfk.wav"]
    references = _references(clips)
    lines = [
        "bench-agreement: xdna-ep (cpu) against faster-whisper fp32, beam 5, temperature fallback, "
        "word timestamps, language en"
    ]
    for model_name in options.models:
        model = xdna_ep.load_model(model_name, device="cpu")
        faster_whisper = faster_whisper_model(model_name, "float32")
        results = []
        for clip in clips:
            result = compare_clip(clip, model, faster_whisper, references.get(str(clip)))
            results.append(result)
            wer = (
                f"WER xdna-ep {result.xdna_wer:.3f}, faster-whisper {result.faster_whisper_wer:.3f}"
                if result.xdna_wer is not None else "no reference"
            )
            lines.append(
                f"{model_name} / {result.clip}: tokens {'same' if result.same_tokens else 'DIFFER'}; {wer}; "
                f"{result.n_words} words {'same' if result.same_words else 'DIFFER'}; "
                f"start {_seconds(result.start_differences)}, end {_seconds(result.end_differences)}; "
                f"xdna-ep beam 5 {result.beam_s:.2f} s, greedy {result.greedy_s:.2f} s"
            )
        starts = [d for r in results for d in r.start_differences]
        ends = [d for r in results for d in r.end_differences]
        lines.append(
            f"{model_name} overall: tokens same on {sum(r.same_tokens for r in results)}/{len(results)} clips, "
            f"words same on {sum(r.same_words for r in results)}/{len(results)}; word start {_seconds(starts)}, "
            f"end {_seconds(ends)} over {len(starts)} words"
        )
    return lines


def configure_parser(parser: argparse.ArgumentParser) -> None:
    defaults = AgreementOptions()
    parser.add_argument("--model", action="append", help=f"model(s) (default: {', '.join(defaults.models)})")
    parser.add_argument("--audio", action="append", help="clip(s) (default: jfk.wav shipped with xdna-ep)")


def run_command(args: argparse.Namespace) -> int:
    options = AgreementOptions(
        models=tuple(args.model) if args.model else AgreementOptions().models, audio=tuple(args.audio or ())
    )
    for line in run_bench(options):
        print(line, flush=True)
    return 0
