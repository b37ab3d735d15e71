"""Word timestamps: DTW, median filter, word splitting and punctuation against openai-whisper's
definitions; the cross-attention outputs of the real decoder graphs; words and times against
faster-whisper's ``word_timestamps=True`` on the same weights; the writers and the CLI."""

from __future__ import annotations

import json
import re
import statistics

import numpy as np
import onnx
import pytest
from conftest import AUDIO_DIR

from xdna_ep.alignment import (
    WordTiming,
    cross_attention_softmax_outputs,
    dtw,
    median_filter,
    merge_punctuations,
    split_to_word_tokens,
)
from xdna_ep.cli import main
from xdna_ep.errors import ModelError
from xdna_ep.transcribe import TranscribeOptions, transcribe
from xdna_ep.writers import to_json, to_srt, to_vtt

def _dtw_reference(x: np.ndarray) -> np.ndarray:
    """openai-whisper's dtw_cpu and backtrace, loop for loop."""
    n, m = x.shape
    cost = np.full((n + 1, m + 1), np.inf)
    trace = -np.ones((n + 1, m + 1))
    cost[0, 0] = 0
    for j in range(1, m + 1):
        for i in range(1, n + 1):
            c0, c1, c2 = cost[i - 1, j - 1], cost[i - 1, j], cost[i, j - 1]
            if c0 < c1 and c0 < c2:
                c, t = c0, 0
            elif c1 < c0 and c1 < c2:
                c, t = c1, 1
            else:
                c, t = c2, 2
            cost[i, j] = x[i - 1, j - 1] + c
            trace[i, j] = t
    i, j = n, m
    trace[0, :] = 2
    trace[:, 0] = 1
    result = []
    while i > 0 or j > 0:
        result.append((i - 1, j - 1))
        if trace[i, j] == 0:
            i, j = i - 1, j - 1
        elif trace[i, j] == 1:
            i -= 1
        else:
            j -= 1
    return np.array(result[::-1]).T


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (7, 1), (5, 40), (23, 9)])
def test_dtw_equals_openai_whisper_loop(shape):
    rng = np.random.default_rng(sum(shape))
    for x in (rng.normal(size=shape), rng.integers(0, 3, size=shape).astype(float)):  # integers: many ties
        rows, columns = dtw(x)
        np.testing.assert_array_equal(np.stack([rows, columns]), _dtw_reference(x))
        assert rows[0] == columns[0] == 0 and (rows[-1], columns[-1]) == (shape[0] - 1, shape[1] - 1)


def test_median_filter_equals_a_window_median():
    x = np.random.default_rng(0).normal(size=(2, 3, 20))
    padded = np.pad(x, [(0, 0), (0, 0), (3, 3)], mode="reflect")
    expected = np.stack([np.median(padded[..., k:k + 7], axis=-1) for k in range(20)], axis=-1)
    np.testing.assert_array_equal(median_filter(x, 7), expected)
    short = x[..., :3]  # no wider than the padding: left as it is (openai-whisper's guard)
    np.testing.assert_array_equal(median_filter(short, 7), short)


def test_split_to_word_tokens_and_merge_punctuations(tiny_en_model):
    tokenizer = tiny_en_model.tokenizer
    tokens = tokenizer.encode(' And so, my "fellow" Americans') + [tokenizer.eot]
    words, word_tokens = split_to_word_tokens(tokenizer, tokens, "en")
    assert [token for pieces in word_tokens for token in pieces] == tokens
    # a word starts at a space or a punctuation mark: ' "' + 'fellow' is one word, the closing '"' another
    assert words[:-1] == [" And", " so", ",", " my", ' "fellow', '"', " Americans"]
    alignment = [WordTiming(word, pieces, 0.0, 0.0, 1.0) for word, pieces in zip(words[:-1], word_tokens[:-1])]
    alignment.insert(3, WordTiming(" (", [7], 0.0, 0.0, 1.0))  # a lone opening mark joins the next word
    merge_punctuations(alignment, "\"'“¿([{-", "\"'.。,，!！?？:：”)]}、")
    merged = [timing.word for timing in alignment if timing.word]
    assert merged == [" And", " so,", " ( my", ' "fellow"', " Americans"]
    assert sum(len(timing.tokens) for timing in alignment) == len(tokens)  # no token lost (+1 inserted, -1 eot)


@pytest.mark.parametrize("model_name", ["tiny.en", "base"])
def test_cross_attention_softmax_found_in_each_decoder_layer(model_name):
    from xdna_ep.models import registry

    folder = registry.ensure_model(model_name)
    graph = onnx.load(str(folder / registry.DECODER_FILE), load_external_data=False).graph
    n_text_layer = registry.read_config(folder)["n_text_layer"]
    found = cross_attention_softmax_outputs(graph, n_text_layer)
    # the exporter names its nodes after the torch modules: every one found is an encoder_attn Softmax
    assert all("encoder_attn" in name for name in found)
    assert [int(re.search(r"layers\.(\d+)", name).group(1)) for name in found] == list(range(n_text_layer))


def test_a_decoder_without_cross_attention_softmax_is_refused():
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["input_ids", "encoder_hidden_states"], ["logits"])], "fused",
        [onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
         for name in ("input_ids", "encoder_hidden_states")],
        [onnx.helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, None)],
    )
    with pytest.raises(ModelError, match="one cross-attention Softmax per decoder layer \\(4\\); .* has 0"):
        cross_attention_softmax_outputs(graph, 4)


def _compare_with_faster_whisper(model, faster_whisper, clip: str) -> tuple[list[float], list[float]]:
    """Same tokens and words as faster-whisper (beam 5, word timestamps); |start|, |end| differences."""
    result = transcribe(model, AUDIO_DIR / clip, TranscribeOptions.from_kwargs(language="en", word_timestamps=True))
    segments, _ = faster_whisper.transcribe(
        str(AUDIO_DIR / clip), beam_size=5, language="en", word_timestamps=True, vad_filter=False
    )
    reference = list(segments)
    assert [s.tokens for s in result.segments] == [s.tokens for s in reference], clip
    ours = [word for segment in result.segments for word in segment.words]
    theirs = [word for segment in reference for word in segment.words]
    assert [w.word for w in ours] == [w.word for w in theirs], clip
    for segment in result.segments:  # openai-whisper's rule: a segment spans its words
        assert (segment.start, segment.end) == (segment.words[0].start, segment.words[-1].end)
        assert all(0 <= word.probability <= 1 and word.start <= word.end for word in segment.words)
    return [abs(a.start - b.start) for a, b in zip(ours, theirs)], [abs(a.end - b.end) for a, b in zip(ours, theirs)]


@pytest.fixture(scope="module")
def faster_whisper_tiny_en():
    from xdna_ep.baselines import faster_whisper_model

    return faster_whisper_model("tiny.en")


def test_words_and_times_match_faster_whisper(tiny_en_model, faster_whisper_tiny_en):
    starts, ends = _compare_with_faster_whisper(tiny_en_model, faster_whisper_tiny_en, "jfk.wav")
    # measured: every start and end equal to faster-whisper's (times are rounded to 10 ms by both)
    assert max(starts + ends) <= 0.011
    assert len(starts) == 22


BASE_CLIPS = ("jfk.wav", "2412-153948-0000.flac", "libri-1088-134315-0000.wav")


@pytest.mark.slow
@pytest.mark.parametrize("model_name", ["tiny.en", "base"])
def test_words_and_times_match_faster_whisper_on_every_english_clip(request, model_name, goldens):
    from xdna_ep.baselines import faster_whisper_model

    model = request.getfixturevalue("tiny_en_model" if model_name == "tiny.en" else "base_model")
    faster_whisper = faster_whisper_model(model_name)
    starts, ends = [], []
    # tiny.en: every shared English clip; base (slower): three, the rest is in bench-agreement's figures
    clips = list(goldens) if model_name == "tiny.en" else list(BASE_CLIPS)
    for clip in clips:
        clip_starts, clip_ends = _compare_with_faster_whisper(model, faster_whisper, clip)
        starts += clip_starts
        ends += clip_ends
    # the goal is a median of 0.05 s; measured 0.000 s median and maximum on both models (bench-agreement)
    assert statistics.median(starts) <= 0.011 and statistics.median(ends) <= 0.011
    assert max(starts + ends) <= 0.05


@pytest.mark.slow
def test_long_form_words_match_faster_whisper(tiny_en_model, faster_whisper_tiny_en):
    """62 s over three windows: with word timestamps a window resumes after its last word, as in
    openai-whisper and faster-whisper; the seeks, tokens, words and times stay theirs."""
    from test_transcribe import LONG_CLIPS

    from xdna_ep.audio import SAMPLE_RATE, load_audio

    gap = np.zeros(SAMPLE_RATE, dtype=np.float32)
    audio = np.concatenate([part for clip, _ in LONG_CLIPS for part in (load_audio(AUDIO_DIR / clip), gap)])
    result = transcribe(tiny_en_model, audio, TranscribeOptions.from_kwargs(language="en", word_timestamps=True))
    segments, _ = faster_whisper_tiny_en.transcribe(
        audio, beam_size=5, language="en", word_timestamps=True, vad_filter=False
    )
    reference = list(segments)
    assert [(s.seek, s.tokens) for s in result.segments] == [(s.seek, s.tokens) for s in reference]
    ours = [word for segment in result.segments for word in segment.words]
    theirs = [word for segment in reference for word in segment.words]
    assert [w.word for w in ours] == [w.word for w in theirs] and len(ours) > 150
    # measured: every time equal to faster-whisper's
    np.testing.assert_allclose([(w.start, w.end) for w in ours], [(w.start, w.end) for w in theirs], rtol=0, atol=0.011)


def test_vad_words_are_in_the_recording_and_match_faster_whisper(tiny_en_model, faster_whisper_tiny_en):
    """Speech, 10 s of silence, speech: VAD cuts the silence; each word's times are mapped back to the
    recording through the chunk that holds the word's middle, as faster-whisper maps them."""
    from xdna_ep.audio import SAMPLE_RATE, load_audio

    silence = np.zeros(10 * SAMPLE_RATE, np.float32)
    audio = np.concatenate([load_audio(AUDIO_DIR / "jfk.wav"), silence, load_audio(AUDIO_DIR / "espeak_device.wav")])
    options = TranscribeOptions.from_kwargs(language="en", vad=True, word_timestamps=True)
    result = transcribe(tiny_en_model, audio, options)
    segments, _ = faster_whisper_tiny_en.transcribe(
        audio, beam_size=5, language="en", vad_filter=True, word_timestamps=True
    )
    ours = [word for segment in result.segments for word in segment.words]
    theirs = [word for segment in segments for word in segment.words]
    assert [w.word for w in ours] == [w.word for w in theirs]
    assert ours[22].start > 21.0  # the first word after the silence, in the recording's time
    # faster-whisper rounds the mapped times to 10 ms, the speech map to 1 ms: measured 2 ms at most
    np.testing.assert_allclose([(w.start, w.end) for w in ours], [(w.start, w.end) for w in theirs], rtol=0, atol=0.006)


def test_batched_mode_refuses_word_timestamps():
    with pytest.raises(ValueError, match="word_timestamps are not computed by the batched mode"):
        TranscribeOptions.from_kwargs(batch_size=4, word_timestamps=True)


@pytest.fixture(scope="module")
def jfk_words(tiny_en_model):
    return transcribe(tiny_en_model, AUDIO_DIR / "jfk.wav", TranscribeOptions.from_kwargs(word_timestamps=True))


def test_json_has_words(jfk_words):
    data = json.loads(to_json(jfk_words))
    words = [word for segment in data["segments"] for word in segment["words"]]
    assert set(words[0]) == {"word", "start", "end", "probability"}
    assert "".join(word["word"] for word in words).strip() == jfk_words.text
    assert [w["start"] for w in words] == sorted(w["start"] for w in words)


def test_srt_and_vtt_one_word_per_cue(jfk_words, tiny_en_model):
    words = [word for segment in jfk_words.segments for word in segment.words]
    blocks = to_srt(jfk_words, word_cues=True).strip("\n").split("\n\n")
    assert [block.split("\n")[2] for block in blocks] == [word.word.strip() for word in words]
    assert blocks[1].split("\n")[1] == "00:00:00,760 --> 00:00:01,060"  # " so," as faster-whisper times it
    header, *cues = to_vtt(jfk_words, word_cues=True).strip("\n").split("\n\n")
    assert header == "WEBVTT" and len(cues) == len(words)
    assert to_srt(jfk_words) != to_srt(jfk_words, word_cues=True)  # segment cues stay the default
    plain = transcribe(tiny_en_model, AUDIO_DIR / "jfk.wav", TranscribeOptions.from_kwargs(beam_size=1))
    assert all(segment.words is None for segment in plain.segments)
    with pytest.raises(ValueError, match="needs a transcription made with word timestamps"):
        to_vtt(plain, word_cues=True)


def test_cli_word_timestamps_and_cues(tmp_path, capsys):
    clip = str(AUDIO_DIR / "jfk.wav")
    arguments = ["transcribe", clip, "--word-timestamps", "--word-cues", "--beam-size", "2"]
    arguments += ["--output-dir", str(tmp_path)]
    assert main(arguments) == 0
    data = json.loads((tmp_path / "jfk.json").read_text())
    assert all(segment["words"] for segment in data["segments"])
    assert (tmp_path / "jfk.srt").read_text().count(" --> ") == sum(len(s["words"]) for s in data["segments"])
    capsys.readouterr()
    assert main(["transcribe", clip, "--word-cues"]) == 2
    assert capsys.readouterr().err.strip() == "error: --word-cues needs --word-timestamps"
    assert main(["transcribe", clip, "--beam-size", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: beam_size must be >= 1, not 0"
