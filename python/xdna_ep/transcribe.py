"""Transcribe a whole recording: 30-s windows with seek, temperature fallback, segments; and the CLI.

Follows openai-whisper's ``transcribe()``: the log-mel is normalised over the whole recording, each
window is cut from it at ``seek`` and zero-padded to 3000 frames (computed a block at a time as seek
reaches it, ``xdna_ep.audio.WindowedLogMel``, so memory does not grow with the duration); after a
window, ``seek`` moves to the last complete timestamp pair (or by the full window), so no speech is
dropped or decoded twice at window edges. A window whose decoding is too repetitive (compression ratio) or too unlikely
(average log probability) is decoded again at the next temperature; a window the model calls
silence (``no_speech_prob``) with an unlikely decoding is skipped, and so is a window of digital
silence (a constant log-mel), without decoding: Whisper hears "you" in it.
"""

from __future__ import annotations

import argparse
import inspect
import sys
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from xdna_ep.cpu_threads import blas_threads_for
from xdna_ep.decoding import DecodingOptions, DecodingResult
from xdna_ep.ep import stats as npu_stats

if TYPE_CHECKING:
    import numpy as np

    from xdna_ep.audio import AudioInput
    from xdna_ep.model import WhisperModel
    from xdna_ep.vad import VadOptions

# DecodingOptions fields transcribe() sets itself for every attempt: not user options
_PER_ATTEMPT_FIELDS = {"temperature", "prompt"}


@dataclass(frozen=True)
class TranscribeOptions:
    """How a recording is transcribed. Validated on construction (ValueError naming the bad value)."""

    # per-window decoding: language, task, timestamps, suppression, sampling (temperature/prompt are set per attempt)
    decoding: DecodingOptions = DecodingOptions()
    # temperatures tried in order; the next one is used when a decoding fails the thresholds below
    temperature: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    # retry when the text's gzip compression ratio is above this (repetition loops); None disables
    compression_ratio_threshold: float | None = 2.4
    # retry when the average log probability of the sampled tokens is below this; None disables
    logprob_threshold: float | None = -1.0
    # skip a window as silence when P(no speech) is above this and the decoding is below logprob_threshold
    no_speech_threshold: float | None = 0.6
    # give the previous window's text as the prompt of the next one (consistent style, risk of loops)
    condition_on_previous_text: bool = True
    # forget the previous text after a window decoded at a temperature above this
    prompt_reset_on_temperature: float = 0.5
    # text given as the prompt of the first window (spelling of names, style)
    initial_prompt: str | None = None
    # show a progress bar over the audio seconds (on stderr)
    progress: bool = False
    # cut what Silero VAD does not call speech before decoding; segment times stay those of the recording
    vad: bool = False
    # Silero VAD's parameters (faster-whisper's names: threshold, min_speech_duration_ms, max_speech_duration_s,
    # min_silence_duration_ms, speech_pad_ms, neg_threshold), a VadOptions or a dict; None: their defaults
    vad_parameters: VadOptions | dict[str, Any] | None = None
    # decode up to this many VAD chunks (<= 30 s of speech each) as one batch, as faster-whisper's
    # BatchedInferencePipeline does (VAD on, no previous text, first temperature only); None: sequential
    batch_size: int | None = None
    # time every word (cross-attention alignment, one extra decoder pass per window on the CPU)
    word_timestamps: bool = False

    def __post_init__(self) -> None:
        temperatures = self.temperature
        if isinstance(temperatures, (int, float)):
            temperatures = (float(temperatures),)
        temperatures = tuple(float(t) for t in temperatures)
        if not temperatures or any(not t >= 0 for t in temperatures):
            raise ValueError(f"temperature must be one or more values >= 0, not {self.temperature!r}")
        object.__setattr__(self, "temperature", temperatures)
        if self.decoding.temperature != 0 or self.decoding.prompt is not None:
            raise ValueError(
                "set the temperature schedule with TranscribeOptions.temperature and the prompt with "
                "initial_prompt, not through DecodingOptions"
            )
        if self.compression_ratio_threshold is not None and self.compression_ratio_threshold <= 0:
            raise ValueError(f"compression_ratio_threshold must be > 0 or None, not {self.compression_ratio_threshold!r}")
        if self.no_speech_threshold is not None and not 0 <= self.no_speech_threshold <= 1:
            raise ValueError(f"no_speech_threshold must be in [0, 1] or None, not {self.no_speech_threshold!r}")
        from xdna_ep.languages import normalize_language

        language = normalize_language(self.decoding.language)  # "auto", names, iw -> he
        if language != self.decoding.language:
            object.__setattr__(self, "decoding", replace(self.decoding, language=language))
        batch_size = self.batch_size
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
            raise ValueError(f"batch_size must be an integer >= 1 or None, not {self.batch_size!r}")
        if batch_size is not None and self.word_timestamps:
            raise ValueError("word_timestamps are not computed by the batched mode (batch_size); use vad without it")
        if self.vad_parameters is not None:
            from xdna_ep.vad import VadOptions

            if not self.vad and self.batch_size is None:
                raise ValueError("vad_parameters are used only with vad=True or a batch_size (--vad, --batch-size)")
            object.__setattr__(self, "vad_parameters", VadOptions.from_value(self.vad_parameters))

    @classmethod
    def from_kwargs(cls, **options: Any) -> TranscribeOptions:
        """Options from flat keyword arguments: fields of TranscribeOptions or of DecodingOptions."""
        own = {f.name for f in fields(cls)} - {"decoding"}
        decoding_names = {f.name for f in fields(DecodingOptions)} - _PER_ATTEMPT_FIELDS
        unknown = sorted(set(options) - own - decoding_names)
        if unknown:
            raise ValueError(
                f"unknown transcribe option(s) {', '.join(unknown)}; known: {', '.join(sorted(own | decoding_names))}"
            )
        decoding = DecodingOptions(**{k: v for k, v in options.items() if k in decoding_names})
        return cls(decoding=decoding, **{k: v for k, v in options.items() if k in own})


@dataclass(frozen=True)
class Word:
    """One word of a segment, times in seconds from the start of the recording."""

    word: str  # with its leading space, and the punctuation next to it
    start: float
    end: float
    probability: float  # mean probability of its tokens


@dataclass(frozen=True)
class Segment:
    """A stretch of speech with its text, times in seconds from the start of the recording."""

    id: int
    seek: int  # mel frame where the window that produced it starts (100 frames per second)
    start: float
    end: float
    text: str
    tokens: list[int]  # text and timestamp tokens
    temperature: float  # temperature of the decoding that was kept
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float
    words: list[Word] | None = None  # with word_timestamps


@dataclass(frozen=True)
class Transcription:
    """The result of transcribing one recording."""

    text: str
    segments: list[Segment]
    language: str
    duration: float  # seconds of audio
    timing: dict[str, float] = field(default_factory=dict)  # seconds per stage: load_audio, log_mel, encode, decode, total
    stats: dict[str, Any] = field(default_factory=dict)  # windows, fallbacks, skipped windows, tokens, model, device

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def transcribe(
    model: WhisperModel,
    audio: AudioInput,
    options: TranscribeOptions = TranscribeOptions(),
    on_segment: Callable[[Segment], None] | None = None,
) -> Transcription:
    """Transcribe ``audio`` (a path, or (n_samples,) float32 mono samples at 16 kHz) with ``model``.

    ``on_segment`` is called with each segment as soon as it is decoded. With ``options.vad`` only what
    Silero VAD calls speech is decoded; with ``options.batch_size`` the VAD chunks are decoded in batches.
    """
    with blas_threads_for(model.device):  # NumPy's BLAS threads would spin and take cores from ONNX Runtime
        return _transcribe(model, audio, options, on_segment)


def _transcribe(
    model: WhisperModel, audio: AudioInput, options: TranscribeOptions, on_segment: Callable[[Segment], None] | None
) -> Transcription:
    """``transcribe`` within its BLAS thread limit."""
    if options.batch_size is not None:
        from xdna_ep.batched import transcribe_batched

        return transcribe_batched(model, audio, options, on_segment)
    if options.vad:
        return _transcribe_speech(model, audio, options, on_segment)
    import numpy as np

    from xdna_ep.audio import (
        FRAMES_PER_SECOND,
        HOP_LENGTH,
        N_FRAMES,
        SAMPLE_RATE,
        WindowedLogMel,
        pad_or_trim,
    )
    from xdna_ep.decoding import check_model_options, decode, detect_language
    from xdna_ep.tokenizer import TIME_PRECISION

    timing = {"load_audio": 0.0, "log_mel": 0.0, "encode": 0.0, "decode": 0.0}
    if options.word_timestamps:
        timing["align"] = 0.0
    started = time.perf_counter()
    check_model_options(model, options.decoding)
    tokenizer = model.tokenizer
    # the log-mel a window at a time (memory flat with the duration): a first pass decodes the audio to
    # find its length and the normalisation's maximum ("load_audio"), windows are computed as seek reaches
    # them ("log_mel"). HOP_LENGTH zeros past the end: the last frames see silence, not a reflection
    mel = WindowedLogMel(audio, model.dims.n_mels, padding=HOP_LENGTH)
    content_frames = mel.n_samples // HOP_LENGTH
    duration = mel.n_samples / SAMPLE_RATE
    timing["load_audio"] = time.perf_counter() - started

    def mel_frames(start: int, stop: int) -> np.ndarray:
        """(n_mels, stop - start) normalised log-mel frames of the recording."""
        clock = time.perf_counter()
        frames = mel.frames(start, stop)
        timing["log_mel"] += time.perf_counter() - clock
        return frames

    def window_features(seek: int) -> tuple[np.ndarray, int]:
        """Encoder output of the window starting at frame ``seek``: ((1, n_audio_ctx, d), frames)."""
        segment_size = min(N_FRAMES, content_frames - seek)
        window = mel_frames(seek, seek + segment_size)
        clock = time.perf_counter()
        features = model.encode(pad_or_trim(window, N_FRAMES))
        timing["encode"] += time.perf_counter() - clock
        return features, segment_size

    npu_before = npu_stats.snapshot() if model.device in ("sim", "npu") else None
    stats: dict[str, Any] = {
        "model": model.name,
        "device": model.device,
        "windows": 0,
        "fallbacks": 0,
        "skipped_no_speech": 0,
        "sampled_tokens": 0,
    }
    language = options.decoding.language
    first_window = None
    if language is None:
        if model.is_multilingual and content_frames > 0:
            first_window = window_features(0)
            clock = time.perf_counter()
            language, _ = detect_language(model, first_window[0])
            timing["decode"] += time.perf_counter() - clock
        else:
            language = "en"
    decoding = replace(options.decoding, language=language)

    def decode_with_fallback(features: np.ndarray, prompt: list[int]) -> DecodingResult:
        result = None
        for attempt, temperature in enumerate(options.temperature):
            if attempt > 0:
                stats["fallbacks"] += 1
            clock = time.perf_counter()
            result = decode(model, features, replace(decoding, temperature=temperature, prompt=tuple(prompt)))
            timing["decode"] += time.perf_counter() - clock
            too_repetitive = (
                options.compression_ratio_threshold is not None
                and result.compression_ratio > options.compression_ratio_threshold
            )
            too_unlikely = options.logprob_threshold is not None and result.avg_logprob < options.logprob_threshold
            silence = options.no_speech_threshold is not None and result.no_speech_prob > options.no_speech_threshold
            # an unlikely decoding of what the model calls silence is kept: the window is skipped anyway
            if not (too_repetitive or too_unlikely) or (silence and too_unlikely):
                break
        assert result is not None  # the schedule holds at least one temperature (checked by the options)
        return result

    input_stride = N_FRAMES // model.dims.n_audio_ctx  # mel frames per encoder position (2)
    timestamp_begin = tokenizer.timestamp_begin
    initial_prompt_tokens = tokenizer.encode(" " + options.initial_prompt.strip()) if options.initial_prompt else []
    all_tokens: list[int] = list(initial_prompt_tokens)
    prompt_reset_since = 0
    segments: list[Segment] = []
    last_speech_timestamp = 0.0

    progress = None
    if options.progress:
        from tqdm import tqdm

        progress = tqdm(total=round(duration, 2), unit="s", unit_scale=True, file=sys.stderr, leave=False)

    seek = 0
    while seek < content_frames:
        time_offset = seek * HOP_LENGTH / SAMPLE_RATE
        silent_frames = min(N_FRAMES, content_frames - seek)
        if np.ptp(mel_frames(seek, seek + silent_frames)) == 0:
            # a constant log-mel (digital silence) holds nothing to hear: decoding it only hallucinates ("you")
            stats["windows"] += 1
            stats["skipped_no_speech"] += 1
            seek += silent_frames
            if progress is not None:
                progress.update(round(silent_frames * HOP_LENGTH / SAMPLE_RATE, 2))
            continue
        if first_window is not None and seek == 0:
            features, segment_size = first_window
        else:
            features, segment_size = window_features(seek)
        stats["windows"] += 1
        segment_duration = segment_size * HOP_LENGTH / SAMPLE_RATE
        result = decode_with_fallback(features, all_tokens[prompt_reset_since:])
        tokens = np.array(result.tokens, dtype=np.int64)
        previous_seek = seek

        if options.no_speech_threshold is not None and result.no_speech_prob > options.no_speech_threshold:
            likely = options.logprob_threshold is not None and result.avg_logprob > options.logprob_threshold
            if not likely:  # silence: skip the whole window
                stats["skipped_no_speech"] += 1
                seek += segment_size
                if progress is not None:
                    progress.update(round(segment_duration, 2))
                continue

        window_segments: list[dict[str, Any]] = []  # start, end, tokens[, words]
        is_timestamp = tokens >= timestamp_begin
        single_timestamp_ending = is_timestamp[-2:].tolist() == [False, True]
        consecutive = np.where(is_timestamp[:-1] & is_timestamp[1:])[0] + 1  # where a pair ends a segment
        if consecutive.size > 0:
            slices = consecutive.tolist()
            if single_timestamp_ending:
                slices.append(len(tokens))
            last_slice = 0
            for current_slice in slices:
                sliced = tokens[last_slice:current_slice]
                start = time_offset + (int(sliced[0]) - timestamp_begin) * TIME_PRECISION
                end = time_offset + (int(sliced[-1]) - timestamp_begin) * TIME_PRECISION
                window_segments.append({"start": start, "end": end, "tokens": sliced.tolist()})
                last_slice = current_slice
            if single_timestamp_ending:
                seek += segment_size  # the speech ran to the end of what was decoded
            else:
                # resume at the last complete timestamp pair: what follows is decoded again next window
                last_timestamp_pos = int(tokens[last_slice - 1]) - timestamp_begin
                seek += last_timestamp_pos * input_stride
        else:
            end_time = segment_duration
            timestamps = tokens[is_timestamp]
            if timestamps.size > 0 and timestamps[-1] != timestamp_begin:
                # a lone final timestamp marks where the speech ended
                end_time = (int(timestamps[-1]) - timestamp_begin) * TIME_PRECISION
            window_segments.append({"start": time_offset, "end": time_offset + end_time, "tokens": tokens.tolist()})
            seek += segment_size

        if options.word_timestamps:
            from xdna_ep.alignment import add_word_timestamps

            clock = time.perf_counter()
            add_word_timestamps(
                model, features, tokenizer.sot_sequence(language, decoding.task), window_segments, time_offset,
                segment_size, language, last_speech_timestamp,
            )
            timing["align"] += time.perf_counter() - clock
            spoken = [segment["words"][-1]["end"] for segment in window_segments if segment["words"]]
            last_word_end = spoken[-1] if spoken else (window_segments[-1]["end"] if window_segments else None)
            if not single_timestamp_ending and last_word_end is not None and last_word_end > time_offset:
                seek = round(last_word_end * FRAMES_PER_SECOND)  # resume after the last word heard
            if last_word_end is not None:
                last_speech_timestamp = last_word_end

        for window_segment in window_segments:
            segment_tokens = window_segment["tokens"]
            # timestamps may run past the end of the recording in its last window
            start = round(min(window_segment["start"], duration), 3)
            end = round(min(window_segment["end"], duration), 3)
            text = tokenizer.decode(segment_tokens)
            if start >= end or not text.strip():  # instantaneous or empty: nothing to show
                continue
            segment = Segment(
                id=len(segments),
                seek=previous_seek,
                start=start,
                end=end,
                text=text,
                tokens=segment_tokens,
                temperature=result.temperature,
                avg_logprob=result.avg_logprob,
                compression_ratio=result.compression_ratio,
                no_speech_prob=result.no_speech_prob,
                words=[Word(**word) for word in window_segment["words"]] if options.word_timestamps else None,
            )
            segments.append(segment)
            all_tokens.extend(segment_tokens)
            stats["sampled_tokens"] += len(segment_tokens)
            if on_segment is not None:
                on_segment(segment)

        if not options.condition_on_previous_text or result.temperature > options.prompt_reset_on_temperature:
            prompt_reset_since = len(all_tokens)
        if progress is not None:
            progress.update(round((min(content_frames, seek) - previous_seek) * HOP_LENGTH / SAMPLE_RATE, 2))

    if progress is not None:
        progress.close()
    timing["total"] = time.perf_counter() - started
    stats["real_time_factor"] = timing["total"] / duration if duration > 0 else 0.0
    if npu_before is not None:
        stats["npu"] = npu_stats.since(npu_before)  # launches, bytes, modelled device time, fallbacks
    return Transcription(
        text="".join(segment.text for segment in segments).strip(),
        segments=segments,
        language=language,
        duration=duration,
        timing={name: round(seconds, 4) for name, seconds in timing.items()},
        stats=stats,
    )


def _transcribe_speech(
    model: WhisperModel,
    audio: AudioInput,
    options: TranscribeOptions,
    on_segment: Callable[[Segment], None] | None,
) -> Transcription:
    """``transcribe`` with VAD, as faster-whisper's ``vad_filter``: the speech Silero VAD finds is
    concatenated and transcribed as one recording; segment times are mapped back to the original."""
    from xdna_ep.audio import N_SAMPLES, SAMPLE_RATE, load_audio, log_mel_spectrogram, pad_or_trim
    from xdna_ep.vad import SpeechMap, VadOptions, speech_timestamps

    vad_options = options.vad_parameters or VadOptions()
    started = time.perf_counter()
    samples = load_audio(audio)
    speech_map = SpeechMap(speech_timestamps(samples, vad_options))
    vad_seconds = time.perf_counter() - started
    duration = samples.size / SAMPLE_RATE
    vad_stats = {
        "vad_speech_chunks": len(speech_map.chunks),
        "vad_removed_seconds": round(duration - speech_map.speech_samples / SAMPLE_RATE, 3),
    }

    if speech_map.speech_samples == 0:  # nothing to decode; the language is still that of the recording
        language = options.decoding.language
        if language is None:
            from xdna_ep.decoding import detect_language

            mel = log_mel_spectrogram(samples[:N_SAMPLES], model.dims.n_mels)
            language, _ = detect_language(model, model.encode(pad_or_trim(mel)))
        total = time.perf_counter() - started
        return Transcription(
            text="", segments=[], language=language, duration=duration,
            timing={"vad": round(vad_seconds, 4), "total": round(total, 4)},
            stats={"model": model.name, "device": model.device, "windows": 0, **vad_stats},
        )

    def original(segment: Segment) -> Segment:
        if segment.words:  # each word in the chunk holding its middle; the segment spans its words (faster-whisper)
            words = []
            for word in segment.words:
                chunk = speech_map.chunk_index((word.start + word.end) / 2)
                words.append(replace(
                    word, start=speech_map.original_time(word.start, chunk_index=chunk),
                    end=speech_map.original_time(word.end, chunk_index=chunk),
                ))
            return replace(segment, start=words[0].start, end=words[-1].end, words=words)
        start, end = speech_map.segment_times(segment.start, segment.end, vad_options.speech_pad_ms / 1000)
        return replace(segment, start=start, end=end)

    on_speech_segment = None if on_segment is None else (lambda segment: on_segment(original(segment)))
    result = transcribe(model, speech_map.cut(samples), replace(options, vad=False, vad_parameters=None), on_speech_segment)
    segments = [original(segment) for segment in result.segments]
    timing = {"vad": round(vad_seconds, 4), **result.timing, "total": round(time.perf_counter() - started, 4)}
    stats = {**result.stats, **vad_stats, "real_time_factor": timing["total"] / duration}
    return replace(result, segments=segments, duration=duration, timing=timing, stats=stats)


# -- command line ---------------------------------------------------------------------------------------

def _temperatures(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(value) for value in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``xdna-ep transcribe``. Defaults live in the option dataclasses, not here."""
    from xdna_ep.ep.cost_model import PRECISIONS
    from xdna_ep.ep.device import DEFAULT_PROFILE, PROFILES
    from xdna_ep.model import DEVICES, WhisperModel
    from xdna_ep.models.quantize import COMPUTE_TYPES
    from xdna_ep.models.registry import DEFAULT_MODEL
    from xdna_ep.tokenizer import TASKS
    from xdna_ep.vad import VadOptions
    from xdna_ep.writers import FORMATS

    defaults = inspect.signature(WhisperModel).parameters
    default_device = defaults["device"].default

    parser.add_argument("files", nargs="+", metavar="FILE", help="audio files (wav, flac, ogg, mp3, m4a, ...)")
    parser.add_argument("--model", help=f"model name or exported model folder (default: {DEFAULT_MODEL})")
    parser.add_argument("--device", choices=DEVICES, help=f"where the heavy ops run (default: {default_device})")
    parser.add_argument(
        "--profile", choices=sorted(PROFILES), help=f"which NPU the sim/npu devices describe (default: {DEFAULT_PROFILE})"
    )
    parser.add_argument("--precision", choices=PRECISIONS, help="NPU arithmetic (bf16, or accurate: about fp32)")
    parser.add_argument("--strict", action="store_true", default=None, help="fail instead of falling back to the CPU")
    parser.add_argument(
        "--compute-type", choices=COMPUTE_TYPES,
        help=f"int8: MatMul weights in 8 bits, CPU device only (default: {defaults['compute_type'].default})",
    )
    parser.add_argument(
        "--threads", type=int, help=f"ONNX Runtime threads per session (default: {defaults['threads'].default}, one per core)"
    )
    parser.add_argument(
        "--language", help="language code or English name, or auto (default: auto with multilingual models)"
    )
    parser.add_argument("--task", choices=TASKS, help=f"default: {DecodingOptions.task}")
    parser.add_argument(
        "--temperature", type=_temperatures, metavar="T[,T...]",
        help="temperature schedule tried in order on decoding failures (a single value: no fallback)",
    )
    parser.add_argument(
        "--beam-size", type=int, metavar="N",
        help=f"beams searched at temperature 0; 1 decodes greedily (default: {DecodingOptions.beam_size})",
    )
    parser.add_argument(
        "--best-of", type=int, metavar="N",
        help=f"candidates sampled at a temperature above 0 (default: {DecodingOptions.best_of})",
    )
    parser.add_argument(
        "--patience", type=float,
        help=f"beam search ends after round(beam size * patience) candidates (default: {DecodingOptions.patience})",
    )
    parser.add_argument(
        "--length-penalty", type=float, metavar="ALPHA",
        help="rank candidates by logprob / ((5 + length) / 6) ** ALPHA, ALPHA in [0, 1] (default: logprob / length)",
    )
    parser.add_argument("--initial-prompt", help="text to condition the first window on (names, spelling)")
    parser.add_argument(
        "--condition-on-previous-text", action=argparse.BooleanOptionalAction, default=None,
        help="prompt each window with the previous window's text "
        f"(default: {'on' if TranscribeOptions.condition_on_previous_text else 'off'})",
    )
    parser.add_argument("--without-timestamps", action="store_true", default=None, help="decode text only, no segments")
    parser.add_argument(
        "--vad", action="store_true", default=None,
        help="decode only what Silero VAD calls speech (faster-whisper's vad_filter); times stay the recording's",
    )
    for vad_field in fields(VadOptions):
        default = vad_field.default
        parser.add_argument(
            f"--vad-{vad_field.name.replace('_', '-')}", dest=f"vad_{vad_field.name}", type=float,
            metavar="X", help=f"VAD {vad_field.name} (default: {default})",
        )
    parser.add_argument(
        "--batch-size", type=int, metavar="N",
        help="decode N VAD chunks of <= 30 s at once (faster-whisper's batched pipeline: VAD on, "
        "no previous text, first temperature only; without --vad-* options the VAD uses "
        "min_silence_duration_ms 160, and max_speech_duration_s is at most 30)",
    )
    parser.add_argument(
        "--word-timestamps", action="store_true", default=None,
        help="time every word (json: each segment's words; srt/vtt: see --word-cues)",
    )
    parser.add_argument(
        "--word-cues", action="store_true",
        help="with --word-timestamps: one word per srt/vtt cue instead of one segment per cue",
    )
    parser.add_argument(
        "--output-format", choices=(*FORMATS, "all"),
        help="write the transcript in this format (default: only print it; with --output-dir: all)",
    )
    parser.add_argument("--output-dir", type=Path, help="folder for the output files (default: current folder)")
    parser.add_argument(
        "--plain", action="store_true", help="print only the text (default: the language, then timestamped segments)"
    )
    parser.add_argument("--progress", action="store_true", default=None, help="progress bar on stderr")
    parser.add_argument("--verbose", action="store_true", help="print segments as they are decoded, and timings, on stderr")


def _given(args: argparse.Namespace, *names: str) -> dict[str, Any]:
    """The arguments the user gave (argparse leaves the others None), under the names of the options."""
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def _vad_parameters(args: argparse.Namespace) -> dict[str, Any] | None:
    """The --vad-* values given, under VadOptions' names (ints where its default is an int)."""
    from xdna_ep.vad import VadOptions

    given = {}
    for vad_field in fields(VadOptions):
        value = getattr(args, f"vad_{vad_field.name}")
        if value is not None:
            given[vad_field.name] = int(value) if isinstance(vad_field.default, int) and value.is_integer() else value
    return given or None


def output_stems(files: list[str]) -> list[str]:
    """One output name per input file, never the same twice: the stem (``jfk``), or where stems collide
    the file name (``jfk.wav``, ``jfk.mp3``), or where names collide too the name and a number."""
    stems = [Path(file).stem for file in files]
    names = [Path(file).name for file in files]
    unique = [stem if stems.count(stem) == 1 else name for stem, name in zip(stems, names)]
    seen: dict[str, int] = {}
    result = []
    for name in unique:
        if unique.count(name) > 1:
            seen[name] = seen.get(name, 0) + 1
            name = f"{name}-{seen[name]}"
        result.append(name)
    return result


def run_command(args: argparse.Namespace) -> int:
    """``xdna-ep transcribe``: print each file's transcript, optionally write txt/srt/vtt/json files.

    A file that cannot be transcribed is reported (``error: FILE: ...``) and the batch goes on; the exit
    status is 2 if any file failed. Options and the language are checked before the model loads.
    """
    from xdna_ep.errors import XdnaError
    from xdna_ep.model import WhisperModel
    from xdna_ep.writers import write_result

    try:
        options = TranscribeOptions.from_kwargs(
            **_given(args, "language", "task", "without_timestamps", "temperature", "initial_prompt",
                     "condition_on_previous_text", "progress", "vad", "batch_size", "beam_size", "best_of",
                     "patience", "length_penalty", "word_timestamps"),
            vad_parameters=_vad_parameters(args),
        )
    except ValueError as error:
        raise XdnaError(str(error)) from None
    if args.word_cues and not options.word_timestamps:
        raise XdnaError("--word-cues needs --word-timestamps")
    from xdna_ep.models.registry import DEFAULT_MODEL

    if options.vad or options.batch_size is not None:
        from xdna_ep.vad import vad_model_path

        vad_model_path()  # a missing VAD model is named now, not once per file after the model loads

    model_name = str(args.model or DEFAULT_MODEL)
    if model_name.endswith(".en"):  # English-only by Whisper's naming: refused now, not after the model loads
        if options.decoding.language not in (None, "en"):
            language = options.decoding.language
            raise XdnaError(f"model {model_name} is English-only: language {language!r} needs a multilingual model")
        if options.decoding.task != "transcribe":
            raise XdnaError(f"model {model_name} is English-only: task {options.decoding.task!r} needs a multilingual model")
    if (args.device or "cpu") == "cpu" and args.strict:
        print("note: --strict has nothing to guard on --device cpu: no node runs on the NPU, so none can fall back",
              file=sys.stderr)
    files = [file for file in args.files if Path(file).is_file()]
    failed = [file for file in args.files if file not in files]
    for file in failed:  # reported before the model loads
        print(f"error: {file}: audio file not found" if not Path(file).exists() else f"error: {file}: not a file",
              file=sys.stderr)
    if not files:
        return 2
    model_options = _given(args, "device", "profile", "precision", "strict", "compute_type", "threads")
    model = WhisperModel(args.model, **model_options) if args.model else WhisperModel(**model_options)
    try:
        from xdna_ep.decoding import check_model_options

        check_model_options(model, options.decoding)
    except ValueError as error:
        raise XdnaError(str(error)) from None

    output_format = args.output_format or ("all" if args.output_dir else None)
    on_segment = _print_segment if args.verbose else None
    for file, stem in zip(args.files, output_stems(args.files)):
        if file in failed:
            continue
        try:
            result = transcribe(model, file, options, on_segment=on_segment)
        except XdnaError as error:  # a bad file (or a strict fallback): report it, go on with the others
            print(f"error: {file}: {error}", file=sys.stderr)
            failed.append(file)
            continue
        if len(args.files) > 1:
            print(f"==> {file} <==")
        detected = options.decoding.language is None and model.is_multilingual
        print(result.text if args.plain else format_transcript(result, detected))
        if "npu" in result.stats:
            print(npu_stats.summary(result.stats["npu"]), file=sys.stderr)
        if args.verbose:
            timing = ", ".join(f"{name} {seconds:.3f} s" for name, seconds in result.timing.items())
            print(f"{file}: {result.duration:.1f} s of audio, language {result.language}; {timing}", file=sys.stderr)
        if output_format:
            output_dir = args.output_dir or Path(".")
            try:
                paths = write_result(result, stem, output_dir, output_format, word_cues=args.word_cues)
            except OSError as error:
                raise XdnaError(f"cannot write the transcript into {output_dir}: {error}") from None
            for path in paths:
                print(f"wrote {path}", file=sys.stderr)
    if failed:
        print(f"{len(failed)} of {len(args.files)} files failed: {', '.join(failed)}", file=sys.stderr)
        return 2
    return 0


def format_transcript(result: Transcription, detected: bool) -> str:
    """The default printout: the language line, then one ``[start --> end] text`` line per segment."""
    from xdna_ep.languages import language_name
    from xdna_ep.writers import format_timestamp

    label = "Detected language" if detected else "Language"
    lines = [f"{label}: {language_name(result.language)} ({result.language})"]
    for segment in result.segments:
        lines.append(f"[{format_timestamp(segment.start)} --> {format_timestamp(segment.end)}] {segment.text.strip()}")
    return "\n".join(lines)


def _print_segment(segment: Segment) -> None:
    from tqdm import tqdm

    from xdna_ep.writers import format_timestamp

    # through tqdm, so a progress bar on the same stream is cleared first and redrawn below the line
    tqdm.write(f"[{format_timestamp(segment.start)} --> {format_timestamp(segment.end)}]{segment.text}", file=sys.stderr)
