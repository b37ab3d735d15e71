"""Whole recordings: timestamps and segments, long audio over several windows, fallback, silence,
writers (parsed back), the one-call API and the CLI end to end."""

from __future__ import annotations

import json
import re

import jiwer
import numpy as np
import pytest
from conftest import AUDIO_DIR

import xdna_ep
from xdna_ep.audio import SAMPLE_RATE, load_audio
from xdna_ep.cli import main
from xdna_ep.transcribe import Transcription, TranscribeOptions, transcribe
from xdna_ep.writers import format_timestamp, to_json, to_srt, to_txt, to_vtt

# one sentence per clip in the long recording, in order, each a phrase only that clip contains
LONG_CLIPS = [
    ("jfk.wav", ["ask not what your country can do for you"]),
    ("2412-153948-0000.flac", ["if the reader will excuse me", "leave my native country", "painful to myself"]),
    ("librispeech-1995-1837-0001.wav", ["first great sorrow of his life", "dreams built around it"]),
    ("libri-1088-134315-0000.wav", ["greatest admiration in the world", "unhappy morning", "rendering to you in person"]),
    ("espeak_stella.wav", ["bring these things"]),
    ("espeak_device.wav", ["should run in real time"]),
]


def _normalise(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9' ]", " ", text.lower()).split())


def _check_segments(result: Transcription) -> None:
    """Segments are ordered, non-empty, inside the recording, with ids in order."""
    previous_end = 0.0
    for index, segment in enumerate(result.segments):
        assert segment.id == index
        assert previous_end - 1e-6 <= segment.start < segment.end <= result.duration + 1e-6, segment
        assert segment.text.strip()
        previous_end = segment.end


@pytest.fixture(scope="module")
def long_recording() -> np.ndarray:
    """The LONG_CLIPS joined with 1 s of silence after each: 62.2 s, window edges inside speech."""
    gap = np.zeros(SAMPLE_RATE, dtype=np.float32)
    return np.concatenate([part for clip, _ in LONG_CLIPS for part in (load_audio(AUDIO_DIR / clip), gap)])


@pytest.fixture(scope="module")
def faster_whisper_tiny_en():
    """faster-whisper (CTranslate2, float32) on the same tiny.en weights: the reference engine."""
    from xdna_ep.baselines import faster_whisper_model

    return faster_whisper_model("tiny.en")


@pytest.mark.parametrize("clip", ["jfk.wav", "2412-153948-0000.flac", "libri-1088-134315-0000.wav"])
def test_timestamped_segments_match_faster_whisper(tiny_en_model, faster_whisper_tiny_en, clip):
    options = TranscribeOptions.from_kwargs(temperature=0.0, beam_size=1, language="en", condition_on_previous_text=False)
    result = transcribe(tiny_en_model, AUDIO_DIR / clip, options)
    reference, _ = faster_whisper_tiny_en.transcribe(
        str(AUDIO_DIR / clip), beam_size=1, temperature=0.0, language="en",
        condition_on_previous_text=False, vad_filter=False,
    )
    reference = list(reference)
    assert [s.tokens for s in result.segments] == [s.tokens for s in reference]
    assert [s.text for s in result.segments] == [s.text for s in reference]
    np.testing.assert_allclose([(s.start, s.end) for s in result.segments], [(s.start, s.end) for s in reference],
                               rtol=0, atol=1e-3)
    assert len(result.segments) >= 2
    _check_segments(result)


@pytest.mark.parametrize("model_fixture", ["tiny_en_model", pytest.param("base_model", marks=pytest.mark.slow)])
def test_timestamps_on_keep_the_text(request, model_fixture, goldens):
    model = request.getfixturevalue(model_fixture)
    for clip in goldens:
        # greedy, as the goldens were made
        options = TranscribeOptions.from_kwargs(temperature=0.0, language="en", beam_size=1)
        result = transcribe(model, AUDIO_DIR / clip, options)
        _check_segments(result)
        assert all(token >= model.tokenizer.timestamp_begin for token in result.segments[0].tokens[:1])
        golden = _normalise(goldens[clip][model.name]["text"])
        # timestamp mode may pick another word where the model hesitates (tiny.en: "carton" -> "cotton",
        # as faster-whisper does too): at most one word in twenty
        assert jiwer.wer(golden, _normalise(result.text)) <= 0.05, (clip, result.text)


def test_long_recording_every_sentence_once_in_order(tiny_en_model, long_recording):
    result = transcribe(tiny_en_model, long_recording, TranscribeOptions.from_kwargs(language="en"))
    assert result.duration == pytest.approx(long_recording.size / SAMPLE_RATE, abs=1e-9)
    assert result.duration > 60.0
    assert result.stats["windows"] >= 3
    text = _normalise(result.text)
    positions = []
    for clip, phrases in LONG_CLIPS:
        for phrase in phrases:
            assert text.count(phrase) == 1, (clip, phrase, text)
            positions.append(text.index(phrase))
    assert positions == sorted(positions)
    _check_segments(result)
    assert result.segments[-1].end > 60.0


@pytest.mark.slow
@pytest.mark.parametrize("condition_on_previous_text", [True, False])
def test_long_recording_matches_faster_whisper(
    tiny_en_model, faster_whisper_tiny_en, long_recording, condition_on_previous_text
):
    """The seek loop, prompts and timestamps over three windows give faster-whisper's segments exactly."""
    options = TranscribeOptions.from_kwargs(
        language="en", beam_size=1, condition_on_previous_text=condition_on_previous_text
    )
    result = transcribe(tiny_en_model, long_recording, options)
    reference, _ = faster_whisper_tiny_en.transcribe(
        long_recording, beam_size=1, language="en", condition_on_previous_text=condition_on_previous_text,
        vad_filter=False,
    )
    reference = list(reference)
    assert [(s.seek, s.text) for s in result.segments] == [(s.seek, s.text) for s in reference]
    np.testing.assert_allclose([(s.start, s.end) for s in result.segments], [(s.start, s.end) for s in reference],
                               rtol=0, atol=1e-3)


def test_temperature_fallback_runs_the_schedule(tiny_en_model):
    # no text compresses below a ratio of 0.5: every temperature is tried, the last result is kept
    options = TranscribeOptions.from_kwargs(
        temperature=(0.0, 0.5, 1.0), compression_ratio_threshold=0.5, best_of=1, without_timestamps=True
    )
    result = transcribe(tiny_en_model, AUDIO_DIR / "jfk.wav", options)
    assert result.stats["fallbacks"] == 2
    assert [segment.temperature for segment in result.segments] == [1.0]


def test_silence_gives_an_empty_result(tiny_en_model):
    result = transcribe(tiny_en_model, np.zeros(10 * SAMPLE_RATE, dtype=np.float32))
    assert result.text == "" and result.segments == []
    assert result.duration == 10.0


def test_audio_shorter_than_one_frame_gives_an_empty_result(tiny_en_model):
    result = transcribe(tiny_en_model, np.full(100, 0.1, dtype=np.float32))
    assert result.text == "" and result.stats["windows"] == 0


def test_initial_prompt_conditions_but_is_not_transcribed(tiny_en_model):
    options = TranscribeOptions.from_kwargs(initial_prompt="President Kennedy's inaugural address.", language="en")
    result = transcribe(tiny_en_model, AUDIO_DIR / "jfk.wav", options)
    assert "inaugural" not in result.text
    assert "ask not what your country" in _normalise(result.text)


@pytest.mark.slow
def test_multilingual_model_detects_english_and_translates(base_model):
    detected = transcribe(base_model, AUDIO_DIR / "jfk.wav")
    assert detected.language == "en"
    assert "ask not what your country" in _normalise(detected.text)
    translated = transcribe(base_model, AUDIO_DIR / "jfk.wav", TranscribeOptions.from_kwargs(task="translate"))
    assert "country" in _normalise(translated.text)


def test_options_are_validated():
    with pytest.raises(ValueError, match="unknown transcribe option"):
        TranscribeOptions.from_kwargs(beam_width=5)
    with pytest.raises(ValueError, match="temperature"):
        TranscribeOptions.from_kwargs(temperature=(0.0, -0.2))
    with pytest.raises(ValueError, match="no_speech_threshold"):
        TranscribeOptions.from_kwargs(no_speech_threshold=2.0)
    assert TranscribeOptions.from_kwargs(temperature=0).temperature == (0.0,)


# -- writers --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def jfk_result(tiny_en_model) -> Transcription:
    return transcribe(tiny_en_model, AUDIO_DIR / "jfk.wav")


def _seconds(timestamp: str) -> float:
    parts = timestamp.replace(",", ".").split(":")
    return sum(float(part) * 60**power for power, part in enumerate(reversed(parts)))


def test_srt_parses_back(jfk_result):
    blocks = to_srt(jfk_result).strip("\n").split("\n\n")
    assert len(blocks) == len(jfk_result.segments) >= 2
    for number, (block, segment) in enumerate(zip(blocks, jfk_result.segments), start=1):
        index, timing, text = block.split("\n")
        start, end = re.fullmatch(r"(\d\d:\d\d:\d\d,\d\d\d) --> (\d\d:\d\d:\d\d,\d\d\d)", timing).groups()
        assert int(index) == number and text == segment.text.strip()
        assert _seconds(start) == pytest.approx(segment.start, abs=1e-3)
        assert _seconds(end) == pytest.approx(segment.end, abs=1e-3)


def test_vtt_parses_back(jfk_result):
    header, *cues = to_vtt(jfk_result).strip("\n").split("\n\n")
    assert header == "WEBVTT"
    assert len(cues) == len(jfk_result.segments)
    for cue, segment in zip(cues, jfk_result.segments):
        timing, text = cue.split("\n")
        start, end = re.fullmatch(r"((?:\d\d:)?\d\d:\d\d\.\d\d\d) --> ((?:\d\d:)?\d\d:\d\d\.\d\d\d)", timing).groups()
        assert text == segment.text.strip()
        assert (_seconds(start), _seconds(end)) == pytest.approx((segment.start, segment.end), abs=1e-3)


def test_json_and_txt(jfk_result):
    data = json.loads(to_json(jfk_result))
    assert data["text"] == jfk_result.text and data["language"] == "en"
    assert [s["text"] for s in data["segments"]] == [s.text for s in jfk_result.segments]
    assert set(data["timing"]) >= {"encode", "decode", "total"} and data["stats"]["windows"] == 1
    assert to_txt(jfk_result).splitlines() == [s.text.strip() for s in jfk_result.segments]


def test_format_timestamp():
    assert format_timestamp(3723.4567, always_include_hours=True, decimal_marker=",") == "01:02:03,457"
    assert format_timestamp(7.74) == "00:07.740"
    with pytest.raises(ValueError):
        format_timestamp(-1.0)


# -- API and CLI ----------------------------------------------------------------------------------------


def test_one_call_api(tiny_en_model):
    import importlib

    importlib.import_module("xdna_ep.transcribe")  # importing the submodule must not hide the function
    assert callable(xdna_ep.transcribe)
    result = xdna_ep.transcribe(str(AUDIO_DIR / "jfk.wav"), model=tiny_en_model, without_timestamps=True)
    assert "ask not what your country" in _normalise(result.text)
    with pytest.raises(ValueError, match="loaded for device 'cpu'"):
        xdna_ep.transcribe(AUDIO_DIR / "jfk.wav", model=tiny_en_model, device="sim")


def test_cli_transcribes_and_writes_every_format(tmp_path, capsys):
    arguments = ["--output-format", "all", "--output-dir", str(tmp_path), "--plain"]
    assert main(["transcribe", str(AUDIO_DIR / "jfk.wav"), *arguments]) == 0
    printed = capsys.readouterr().out
    assert "ask not what your country" in _normalise(printed)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["jfk.json", "jfk.srt", "jfk.txt", "jfk.vtt"]
    data = json.loads((tmp_path / "jfk.json").read_text())
    assert _normalise(data["text"]) == _normalise(printed)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["missing.wav"], "audio file not found"),
        (["EMPTY"], "empty"),
        (["jfk.wav", "--language", "xx"], "unknown language 'xx'"),
        (["jfk.wav", "--task", "translate"], "English-only"),
        (["jfk.wav", "--model", "nosuch"], "unknown model 'nosuch'"),
        (["jfk.wav", "--temperature", "-1"], "temperature"),
    ],
)
def test_cli_errors_are_one_line_and_exit_2(tmp_path, capsys, arguments, message):
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    replace = {"jfk.wav": str(AUDIO_DIR / "jfk.wav"), "missing.wav": str(tmp_path / "missing.wav"), "EMPTY": str(empty)}
    assert main(["transcribe", *[replace.get(a, a) for a in arguments]]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_cli_rejects_unknown_option_values(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["transcribe", str(AUDIO_DIR / "jfk.wav"), "--output-format", "xml"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'xml'" in capsys.readouterr().err
