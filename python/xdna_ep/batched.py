"""Batched long-form transcription: VAD chunks of up to 30 s decoded several at a time, as one batch.

Follows faster-whisper's ``BatchedInferencePipeline``: Silero VAD finds the speech (stretches split at
``max_speech_duration_s = 30``, pauses of 160 ms end a stretch unless ``vad_parameters`` say
otherwise); consecutive stretches are packed into chunks of at most 30 s (and, unlike faster-whisper, no pause
longer than 2 s inside one, so a chunk's segment does not span a long silence); ``batch_size`` chunks are
encoded as one (batch, n_mels, 3000) input and decoded together, the decoder's batch dimension holding
one chunk per row. Every chunk is decoded with the same prompt (no previous text) and at the first
temperature of the schedule only. Where the decoding of a chunk closes its last segment 1 s or more
before the chunk's end (Whisper often stops early; the sequential path seeks past such a stop), the
rest of the chunk is queued as a chunk of its own and decoded in the next batch; faster-whisper does
not do this. With timestamps (the default here; faster-whisper's batched mode
defaults to ``without_timestamps=True``) a chunk's timestamp pairs give its segments; without, the
chunk is one segment. Segment times are mapped back to the recording. A chunk the model calls silence with an unlikely decoding is dropped, as
the sequential path drops such a window.

Decoding is greedy at temperature 0 (one sample per row above it); ``best_of`` does not apply here.

Sequential decoding (``transcribe`` without ``batch_size``) runs the decoder once per token for one
window; here one decoder call per token serves ``batch_size`` windows, which is where the speed-up on
long recordings comes from.
"""

from __future__ import annotations

import math
import sys
import time
from collections import deque
from dataclasses import replace
from typing import TYPE_CHECKING, Callable

import numpy as np

from xdna_ep.audio import CHUNK_LENGTH, HOP_LENGTH, N_FRAMES, SAMPLE_RATE, load_audio, log_mel_spectrogram, pad_or_trim
from xdna_ep.decoding import (
    DecodingOptions,
    DecodingResult,
    LogitFilter,
    check_model_options,
    compression_ratio,
    detect_language,
    initial_tokens,
    log_softmax,
    sample_candidates,
)
from xdna_ep.ep import stats as npu_stats
from xdna_ep.tokenizer import TIME_PRECISION
from xdna_ep.vad import SpeechMap, VadOptions, speech_timestamps

if TYPE_CHECKING:
    from xdna_ep.audio import AudioInput
    from xdna_ep.model import WhisperModel
    from xdna_ep.transcribe import Segment, TranscribeOptions, Transcription

# faster-whisper's batched VAD defaults: short pauses end a stretch; no stretch longer than a window
BATCHED_VAD_OPTIONS = VadOptions(min_silence_duration_ms=160, max_speech_duration_s=CHUNK_LENGTH)


# a pause longer than this starts a new chunk, so a chunk's segment never spans a long cut (faster-whisper
# packs across any pause; its segment then covers the silence between)
MAX_PAUSE_IN_CHUNK = 2.0  # seconds


def pack_chunks(
    stretches: list[tuple[int, int]], max_samples: int, max_pause_samples: int
) -> list[list[tuple[int, int]]]:
    """Consecutive stretches of speech (start, end samples) grouped so each group holds <= ``max_samples``
    of speech and no pause longer than ``max_pause_samples``."""
    groups: list[list[tuple[int, int]]] = []
    size = 0
    for start, end in stretches:
        if groups and size + (end - start) <= max_samples and start - groups[-1][-1][1] <= max_pause_samples:
            groups[-1].append((start, end))
            size += end - start
        else:
            groups.append([(start, end)])
            size = end - start
    return groups


def split_at_timestamps(
    tokens: list[int], timestamp_begin: int, chunk_seconds: float
) -> list[tuple[float, float, list[int]]]:
    """Sampled tokens of one chunk -> (start, end, tokens) per segment, in chunk seconds.

    ``<|t0|> text <|t1|><|t1|> text <|t2|>``: each text between a timestamp and the next is a segment;
    text with no closing timestamp runs to the end of the chunk, and text with none at all (decoded
    without timestamps) is one segment over the whole chunk.
    """
    segments = []
    start: float | None = None
    pending: list[int] = []  # the current segment's tokens, its timestamps included
    for token in tokens:
        if token < timestamp_begin:
            pending.append(token)
            continue
        seconds = (token - timestamp_begin) * TIME_PRECISION
        if start is not None and any(t < timestamp_begin for t in pending):
            segments.append((start, seconds, pending + [token]))
            start, pending = None, []
        else:  # an opening timestamp (or the second of a pair)
            start, pending = seconds, [token]
    if any(t < timestamp_begin for t in pending):
        segments.append((start or 0.0, chunk_seconds, pending))
    return segments


# a chunk whose decoding closed its last segment this long before the chunk's end is decoded again from there
RESUME_MIN_SECONDS = 1.0


def undecoded_speech(group: list[tuple[int, int]], tokens: list[int], timestamp_begin: int) -> list[tuple[int, int]]:
    """The stretches (samples of the recording) of a chunk that its decoding left out, or [].

    Whisper often ends a window's decoding early, leaving its last seconds out; the sequential path
    seeks to the last timestamp and decodes on from there. Here the rest of the chunk (after the last
    closing timestamp, if at least RESUME_MIN_SECONDS before the chunk's end) becomes a chunk of its own.
    A decoding whose last token is text ran to the end of the chunk: nothing is left.
    """
    if not tokens or tokens[-1] < timestamp_begin:
        return []
    last_end = (tokens[-1] - timestamp_begin) * TIME_PRECISION
    offset = round(last_end * SAMPLE_RATE)  # samples into the concatenated chunk
    if offset == 0 or sum(end - start for start, end in group) - offset < RESUME_MIN_SECONDS * SAMPLE_RATE:
        return []
    rest = []
    for start, end in group:
        if offset >= end - start:
            offset -= end - start
            continue
        rest.append((start + offset, end))
        offset = 0
    return rest


def decode_batch(
    model: WhisperModel, audio_features: np.ndarray, options: DecodingOptions, language: str
) -> list[DecodingResult]:
    """Decode ``audio_features`` (batch, n_audio_ctx, n_audio_state), one window per row, with one prompt.

    Greedy at ``options.temperature == 0``, else one sample per row. A row that has ended is fed
    ``<|endoftext|>`` until every row has; its log probability stops counting when it ends.
    """
    tokenizer = model.tokenizer
    n_batch = audio_features.shape[0]
    n_text_ctx = model.dims.n_text_ctx
    prompt = initial_tokens(tokenizer, options, language, n_text_ctx)
    sample_begin = len(prompt)
    sot_index = prompt.index(tokenizer.sot)
    sample_len = options.sample_len or n_text_ctx // 2
    logit_filter = LogitFilter(tokenizer, options, sample_begin)
    tokens = np.tile(np.array(prompt, dtype=np.int64), (n_batch, 1))  # (batch, n)
    state = model.new_decoder_state(audio_features)
    logits = model.decode_step(state, tokens, positions=[sot_index, -1])  # (batch, 2, n_vocab)
    no_speech_probs = np.exp(log_softmax(logits[:, 0].astype(np.float64)))[:, tokenizer.no_speech]
    # the rows decode as sampling candidates do: greedy at temperature 0, one sample per row otherwise
    candidates, sum_logprobs = sample_candidates(model, state, logits[:, 1], tokens, logit_filter, options, sample_len)

    results = []
    for row, (sampled, sum_logprob) in enumerate(zip(candidates, sum_logprobs)):
        text = tokenizer.decode(sampled)
        results.append(
            DecodingResult(
                tokens=sampled,
                text=text,
                language=language,
                avg_logprob=float(sum_logprob / (len(sampled) + 1)),
                no_speech_prob=float(no_speech_probs[row]),
                temperature=options.temperature,
                compression_ratio=compression_ratio(text),
            )
        )
    return results


def transcribe_batched(
    model: WhisperModel,
    audio: AudioInput,
    options: TranscribeOptions,
    on_segment: Callable[[Segment], None] | None = None,
) -> Transcription:
    """Transcribe ``audio`` by VAD chunks, ``options.batch_size`` chunks per encoder and decoder batch."""
    from xdna_ep.transcribe import Segment, Transcription

    assert options.batch_size is not None  # transcribe() sends only batched options here
    timing = {"load_audio": 0.0, "vad": 0.0, "log_mel": 0.0, "encode": 0.0, "decode": 0.0}
    started = time.perf_counter()
    # the first temperature of the schedule, no previous text (faster-whisper's batched mode)
    decoding = replace(
        options.decoding,
        temperature=options.temperature[0],
        prompt=options.initial_prompt.strip() if options.initial_prompt else None,
    )
    check_model_options(model, decoding)
    samples = load_audio(audio)
    duration = samples.size / SAMPLE_RATE
    timing["load_audio"] = time.perf_counter() - started

    clock = time.perf_counter()
    vad_options = options.vad_parameters or BATCHED_VAD_OPTIONS
    if vad_options.max_speech_duration_s > CHUNK_LENGTH:  # a longer stretch would not fit one window (as faster-whisper)
        vad_options = replace(vad_options, max_speech_duration_s=CHUNK_LENGTH)
    stretches = speech_timestamps(samples, vad_options)
    pad = vad_options.speech_pad_ms / 1000
    groups = pack_chunks(stretches, CHUNK_LENGTH * SAMPLE_RATE, round(MAX_PAUSE_IN_CHUNK * SAMPLE_RATE))
    timing["vad"] = time.perf_counter() - clock

    npu_before = npu_stats.snapshot() if model.device in ("sim", "npu") else None
    stats: dict = {
        "model": model.name,
        "device": model.device,
        "batch_size": options.batch_size,
        "windows": len(groups),
        "batches": 0,
        "skipped_no_speech": 0,
        "sampled_tokens": 0,
        "resumed_chunks": 0,
        "vad_speech_chunks": len(stretches),
        "vad_removed_seconds": round(duration - sum(end - start for start, end in stretches) / SAMPLE_RATE, 3),
    }
    progress = None
    if options.progress:
        from tqdm import tqdm

        progress = tqdm(total=len(groups), unit="chunk", file=sys.stderr, leave=False)

    language = decoding.language
    queue = deque(groups)  # chunks still to decode, in time order
    held: list[Segment] = []  # decoded segments a queued chunk may still precede
    segments: list[Segment] = []
    while queue:
        batch_groups = [queue.popleft() for _ in range(min(options.batch_size, len(queue)))]
        clock = time.perf_counter()
        mels = []
        for group in batch_groups:
            chunk = np.concatenate([samples[start:end] for start, end in group])
            mels.append(pad_or_trim(log_mel_spectrogram(chunk, model.dims.n_mels), N_FRAMES))
        timing["log_mel"] += time.perf_counter() - clock
        clock = time.perf_counter()
        features = model.encode(np.stack(mels))  # (batch, n_audio_ctx, n_audio_state)
        timing["encode"] += time.perf_counter() - clock
        clock = time.perf_counter()
        if language is None:  # detected once, on the first chunk (faster-whisper: on the first 30 s of speech)
            language, _ = detect_language(model, features[:1])
        results = decode_batch(model, features, decoding, language)
        timing["decode"] += time.perf_counter() - clock
        stats["batches"] += 1

        remainders = []
        for group, result in zip(batch_groups, results):
            silence = options.no_speech_threshold is not None and result.no_speech_prob > options.no_speech_threshold
            unlikely = options.logprob_threshold is None or result.avg_logprob < options.logprob_threshold
            if (silence and unlikely) or not result.text.strip():
                stats["skipped_no_speech"] += 1
                continue
            speech_map = SpeechMap(group)  # chunk time -> recording time
            chunk_seconds = speech_map.speech_samples / SAMPLE_RATE
            for start, end, segment_tokens in split_at_timestamps(result.tokens, model.tokenizer.timestamp_begin,
                                                                  chunk_seconds):
                text = model.tokenizer.decode(segment_tokens)
                start, end = speech_map.segment_times(min(start, chunk_seconds), min(end, chunk_seconds), pad)
                if start >= end or not text.strip():
                    continue
                held.append(
                    Segment(
                        id=-1,  # numbered when emitted, in time order
                        seek=round(group[0][0] / HOP_LENGTH),
                        start=start,
                        end=end,
                        text=text,
                        tokens=segment_tokens,
                        temperature=result.temperature,
                        avg_logprob=result.avg_logprob,
                        compression_ratio=result.compression_ratio,
                        no_speech_prob=result.no_speech_prob,
                    )
                )
            stats["sampled_tokens"] += len(result.tokens)
            remainder = undecoded_speech(group, result.tokens, model.tokenizer.timestamp_begin)
            if remainder:
                remainders.append(remainder)
        stats["resumed_chunks"] += len(remainders)
        stats["windows"] += len(remainders)
        queue.extendleft(reversed(remainders))  # decoded next, before later chunks: the queue stays in time order
        # emit, in time order, what no queued chunk can come before
        horizon = queue[0][0][0] / SAMPLE_RATE if queue else math.inf
        held.sort(key=lambda segment: segment.start)
        while held and held[0].start < horizon:
            segment = replace(held.pop(0), id=len(segments))
            segments.append(segment)
            if on_segment is not None:
                on_segment(segment)
        if progress is not None:
            progress.update(len(batch_groups) - len(remainders))

    if progress is not None:
        progress.close()
    if language is None:  # no speech at all: the language is still that of the recording
        mel = pad_or_trim(log_mel_spectrogram(samples[: CHUNK_LENGTH * SAMPLE_RATE], model.dims.n_mels), N_FRAMES)
        language, _ = detect_language(model, model.encode(mel))
    timing["total"] = time.perf_counter() - started
    stats["real_time_factor"] = timing["total"] / duration if duration > 0 else 0.0
    if npu_before is not None:
        stats["npu"] = npu_stats.since(npu_before)
    return Transcription(
        text="".join(segment.text for segment in segments).strip(),
        segments=segments,
        language=language,
        duration=duration,
        timing={name: round(seconds, 4) for name, seconds in timing.items()},
        stats=stats,
    )
