"""Silero VAD on ONNX Runtime, the map back to the recording, VAD before decoding, and batched decoding."""

from __future__ import annotations

import re

import numpy as np
import pytest
from conftest import AUDIO_DIR

from xdna_ep.audio import SAMPLE_RATE, load_audio
from xdna_ep.batched import pack_chunks
from xdna_ep.errors import ModelError
from xdna_ep.transcribe import TranscribeOptions, transcribe
from xdna_ep.vad import (
    SpeechMap,
    VadOptions,
    load_vad_session,
    speech_probabilities,
    speech_timestamps,
    speech_timestamps_from_probabilities,
)

GAP = 30.0  # seconds of silence, then of noise, between the clips of the gapped recording
# (clip, phrases only that clip contains)
GAPPED_CLIPS = [
    ("jfk.wav", ["ask not what your country can do for you"]),
    ("librispeech-1995-1837-0001.wav", ["first great sorrow of his life", "dreams built around it"]),
    ("2412-153948-0000.flac", ["if the reader will excuse me", "painful to myself"]),
]


def _normalise(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9' ]", " ", text.lower()).split())


@pytest.fixture(scope="module")
def gapped_recording() -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Three clips with 30 s of digital silence, then 30 s of white noise (std 0.05), between them:
    91.4 s, and the (start, end) seconds of each clip in it."""
    clips = [load_audio(AUDIO_DIR / clip) for clip, _ in GAPPED_CLIPS]
    silence = np.zeros(round(GAP * SAMPLE_RATE), dtype=np.float32)
    noise = (np.random.default_rng(0).standard_normal(silence.size) * 0.05).astype(np.float32)
    parts = [clips[0], silence, clips[1], noise, clips[2]]
    spans, position = [], 0
    for part in parts:
        if part is not silence and part is not noise:
            spans.append((position / SAMPLE_RATE, (position + part.size) / SAMPLE_RATE))
        position += part.size
    return np.concatenate(parts), spans


# -- options and the model ------------------------------------------------------------------------------


def test_vad_options_are_validated_with_faster_whispers_names():
    assert VadOptions.from_value({"threshold": 0.3, "min_silence_duration_ms": 500}).threshold == 0.3
    with pytest.raises(ValueError, match="unknown vad parameter.*min_silence_ms"):
        VadOptions.from_value({"min_silence_ms": 500})
    with pytest.raises(ValueError, match="threshold must be in"):
        VadOptions(threshold=1.5)
    with pytest.raises(ValueError, match="max_speech_duration_s must be above"):
        VadOptions(max_speech_duration_s=0.5)
    with pytest.raises(ValueError, match="only with vad=True or a batch_size"):
        TranscribeOptions.from_kwargs(vad_parameters={"threshold": 0.3})
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        TranscribeOptions.from_kwargs(batch_size=0)


def test_missing_vad_model_is_named(monkeypatch, tmp_path):
    load_vad_session.cache_clear()
    monkeypatch.setenv("XDNA_EP_VAD_MODEL", str(tmp_path / "absent.onnx"))
    try:
        with pytest.raises(ModelError, match="XDNA_EP_VAD_MODEL=.*absent.onnx is not a file"):
            load_vad_session()
    finally:
        load_vad_session.cache_clear()


@pytest.mark.parametrize("clip", ["jfk.wav", "librispeech-1995-1837-0001.wav"])
@pytest.mark.parametrize("parameters", [{}, {"min_silence_duration_ms": 160, "max_speech_duration_s": 30}])
def test_speech_timestamps_equal_faster_whispers(clip, parameters):
    from faster_whisper.vad import VadOptions as FasterWhisperVadOptions
    from faster_whisper.vad import get_speech_timestamps

    samples = load_audio(AUDIO_DIR / clip)
    theirs = get_speech_timestamps(samples, FasterWhisperVadOptions(**parameters))
    # the same model file, windows and state machine: the same sample indices, exactly
    assert speech_timestamps(samples, VadOptions(**parameters)) == [(c["start"], c["end"]) for c in theirs]


def test_speech_probabilities_tell_speech_from_silence():
    speech = load_audio(AUDIO_DIR / "jfk.wav")[: 2 * SAMPLE_RATE]
    silence = np.zeros(2 * SAMPLE_RATE, dtype=np.float32)
    probabilities = speech_probabilities(np.concatenate([silence, speech]))
    assert probabilities.shape == (-(-4 * SAMPLE_RATE // 512),)  # one per started 512-sample window
    windows = 2 * SAMPLE_RATE // 512
    # measured: max 0.024 over the silence, median 0.78 over the first 2 s of speech (it starts at 0.3 s)
    assert probabilities[:windows].max() < 0.1
    assert np.median(probabilities[windows + 1:]) > 0.6


def test_speech_timestamps_from_probabilities():
    window = 512
    # 1 s of silence, 2 s of speech with a 0.5-s pause inside, 2 s of silence (in 32-ms windows)
    probabilities = np.array([0.0] * 31 + [0.9] * 31 + [0.0] * 16 + [0.9] * 31 + [0.0] * 63)
    n_samples = probabilities.size * window
    # the 0.5-s pause is shorter than min_silence_duration_ms: one stretch, padded by 0.1 s
    options = VadOptions(min_silence_duration_ms=1000, speech_pad_ms=100)
    assert speech_timestamps_from_probabilities(probabilities, n_samples, options) == [(31 * window - 1600, 109 * window + 1600)]
    # a 300-ms minimum silence splits it at the pause; the two pads do not overlap
    options = VadOptions(min_silence_duration_ms=300, speech_pad_ms=100)
    assert speech_timestamps_from_probabilities(probabilities, n_samples, options) == [
        (31 * window - 1600, 62 * window + 1600), (78 * window - 1600, 109 * window + 1600),
    ]


def test_speech_map_back_to_the_recording():
    # speech kept: 1-3 s and 10-12 s of the recording -> 0-2 s and 2-4 s of the concatenation
    speech_map = SpeechMap([(1 * SAMPLE_RATE, 3 * SAMPLE_RATE), (10 * SAMPLE_RATE, 12 * SAMPLE_RATE)])
    assert speech_map.speech_samples == 4 * SAMPLE_RATE
    assert speech_map.original_time(0.5) == 1.5
    assert speech_map.original_time(2.5) == 10.5
    assert speech_map.original_time(2.0, is_end=True) == 3.0  # an end at the cut belongs to the first chunk
    assert speech_map.original_time(2.0) == 10.0  # a start at the cut to the second
    # a segment that starts in the last 0.3 s of the first chunk starts with the second chunk
    assert speech_map.segment_times(1.7, 3.5, pad=0.4) == (10.0, 11.5)
    # one with more than the pad on both sides keeps both ends (it spans the cut)
    assert speech_map.segment_times(1.0, 3.5, pad=0.4) == (2.0, 11.5)
    recording = np.arange(13 * SAMPLE_RATE, dtype=np.float32)
    cut = speech_map.cut(recording)
    assert cut.size == 4 * SAMPLE_RATE and cut[0] == SAMPLE_RATE and cut[2 * SAMPLE_RATE] == 10 * SAMPLE_RATE


def test_pack_chunks_stays_under_30_s_and_breaks_at_long_pauses():
    second = SAMPLE_RATE
    stretches = [(0, 10 * second), (11 * second, 25 * second), (26 * second, 35 * second), (60 * second, 62 * second)]
    groups = pack_chunks(stretches, 30 * second, 2 * second)
    # 10 + 14 s fit; +9 s would be 33 s; the 25-s pause starts another chunk
    assert groups == [stretches[:2], stretches[2:3], stretches[3:]]


# -- end to end on the gapped recording ----------------------------------------------------------------


def _check_no_text_in_gaps(result, spans):
    """Every segment lies inside one clip's span (0.5 s of VAD padding allowed), and every phrase is there once."""
    for segment in result.segments:
        assert any(start - 0.5 <= segment.start < segment.end <= end + 0.5 for start, end in spans), segment
    text = _normalise(result.text)
    for _, phrases in GAPPED_CLIPS:
        for phrase in phrases:
            assert text.count(phrase) == 1, (phrase, text)


@pytest.mark.slow
def test_vad_decodes_only_speech_with_times_of_the_recording(tiny_en_model, gapped_recording):
    samples, spans = gapped_recording
    result = transcribe(tiny_en_model, samples, TranscribeOptions(vad=True))
    _check_no_text_in_gaps(result, spans)
    assert result.duration == pytest.approx(samples.size / SAMPLE_RATE)
    # measured: 59.6 s of the 60 s of gaps removed; the first segment of each clip starts within 0.25 s of it
    assert result.stats["vad_removed_seconds"] == pytest.approx(2 * GAP, abs=1.0)
    for (clip_start, _), phrases in zip(spans, (p for _, p in GAPPED_CLIPS)):
        first = next(s for s in result.segments if phrases[0] in _normalise(s.text))
        assert abs(first.start - clip_start) < 0.5, (first, clip_start)
    assert result.stats["windows"] == 2  # 31 s of speech: two windows instead of four


@pytest.mark.slow
def test_batched_decodes_the_same_text_as_one_chunk_at_a_time(tiny_en_model, gapped_recording):
    samples, spans = gapped_recording
    one = transcribe(tiny_en_model, samples, TranscribeOptions(batch_size=1))
    batched = transcribe(tiny_en_model, samples, TranscribeOptions(batch_size=3))
    _check_no_text_in_gaps(batched, spans)
    assert batched.stats["batches"] == 1 and one.stats["batches"] == 3
    # rows of a batch are independent: the same tokens as decoding each chunk alone (measured equal)
    assert [s.tokens for s in batched.segments] == [s.tokens for s in one.segments]
    assert [(s.start, s.end) for s in batched.segments] == [(s.start, s.end) for s in one.segments]


def test_split_at_timestamps():
    from xdna_ep.batched import split_at_timestamps

    begin = 1000  # <|0.00|>; each id above adds 0.02 s
    text_a, text_b = [1, 2], [3]
    tokens = [begin, *text_a, begin + 250, begin + 250, *text_b, begin + 400]
    assert split_at_timestamps(tokens, begin, 12.0) == [
        (0.0, 5.0, [begin, *text_a, begin + 250]), (5.0, 8.0, [begin + 250, *text_b, begin + 400]),
    ]
    # an unclosed last segment runs to the end of the chunk; text without timestamps is the whole chunk
    assert split_at_timestamps([begin + 50, *text_b], begin, 12.0) == [(1.0, 12.0, [begin + 50, *text_b])]
    assert split_at_timestamps(text_a, begin, 12.0) == [(0.0, 12.0, text_a)]


def test_api_takes_faster_whispers_vad_names(tiny_en_model):
    import xdna_ep

    result = xdna_ep.transcribe(
        AUDIO_DIR / "jfk.wav", tiny_en_model, vad=True, vad_parameters={"min_silence_duration_ms": 500}
    )
    assert "ask not what your country can do for you" in _normalise(result.text)
    assert result.stats["vad_speech_chunks"] >= 2  # jfk's pauses of 0.5 s and more split it (measured 4)
    assert result.segments[-1].end <= result.duration


@pytest.mark.parametrize("options", [{"vad": True}, {"batch_size": 2}])
def test_no_speech_gives_an_empty_result_without_decoding(tiny_en_model, options):
    noise = (np.random.default_rng(1).standard_normal(20 * SAMPLE_RATE) * 0.05).astype(np.float32)
    result = transcribe(tiny_en_model, noise, TranscribeOptions.from_kwargs(**options))
    assert result.segments == [] and result.text == "" and result.language == "en"
    assert result.stats["vad_speech_chunks"] == 0 and result.duration == 20.0


@pytest.mark.slow
def test_batched_on_the_simulated_npu(tiny_en_model):
    import jiwer

    from xdna_ep.model import WhisperModel

    jfk = load_audio(AUDIO_DIR / "jfk.wav")
    samples = np.concatenate([jfk, np.zeros(3 * SAMPLE_RATE, dtype=np.float32), jfk])  # two chunks: one batch
    sim = transcribe(WhisperModel("tiny.en", device="sim"), samples, TranscribeOptions(batch_size=2))
    cpu = transcribe(tiny_en_model, samples, TranscribeOptions(batch_size=2))
    assert sim.stats["batches"] == 1 and sim.stats["windows"] == 2
    assert sim.stats["npu"]["totals"]["launches"] > 0 and sim.stats["npu"]["totals"]["fallbacks"] == 0
    # bf16 on the simulator: measured the CPU's text exactly; 0.05 as the other bf16 end-to-end tests allow
    assert jiwer.wer(_normalise(cpu.text), _normalise(sim.text)) <= 0.05


def test_undecoded_speech_is_the_rest_of_the_chunk_after_the_last_closed_segment():
    from xdna_ep.batched import undecoded_speech

    begin = 1000  # <|0.00|>
    second = SAMPLE_RATE
    group = [(10 * second, 20 * second), (30 * second, 40 * second)]  # 20 s of speech
    # the decoding closed its last segment at 12 s of the chunk: 2 s into the second stretch
    assert undecoded_speech(group, [begin, 5, begin + 600], begin) == [(32 * second, 40 * second)]
    assert undecoded_speech(group, [begin, 5, begin + 250], begin) == [(15 * second, 20 * second), (30 * second, 40 * second)]
    # ran to the end (last token is text), or stopped less than 1 s before it: nothing left
    assert undecoded_speech(group, [begin, 5], begin) == []
    assert undecoded_speech(group, [begin, 5, begin + 960], begin) == []


def test_batched_never_makes_a_chunk_longer_than_a_window(tiny_en_model):
    # 40 s of speech with no pause of 2 s: VAD's defaults (no maximum) would give one 40-s stretch
    jfk = load_audio(AUDIO_DIR / "jfk.wav")
    samples = np.concatenate([jfk, jfk, jfk, jfk[: 7 * SAMPLE_RATE]])
    options = TranscribeOptions.from_kwargs(batch_size=2, vad_parameters={"threshold": 0.5}, without_timestamps=True)
    result = transcribe(tiny_en_model, samples, options)
    assert result.stats["windows"] >= 2
    # every "ask not" of the four repetitions is decoded: nothing past 30 s of a chunk was cut off
    assert _normalise(result.text).count("ask not what your country") == 4, result.text
