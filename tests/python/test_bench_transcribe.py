"""bench-transcribe runs every engine on the same clip and reports agreement, not only time."""

from __future__ import annotations

import json
import re

import numpy as np
import soundfile

from xdna_ep.audio import SAMPLE_RATE, load_audio
from xdna_ep.bench_transcribe import TranscribeBenchOptions, load_recording, run_bench, word_error_rates
from xdna_ep.cli import main

from conftest import AUDIO_DIR


def test_engines_agree_and_speedups_are_printed():
    clip = AUDIO_DIR / "librispeech-1995-1837-0001.wav"
    lines = run_bench(TranscribeBenchOptions(models=("tiny.en",), audio=(str(clip),), repeats=1))
    table = [line for line in lines if re.match(r"\s+(xdna-ep|faster-whisper)", line)]
    assert [" ".join(line.split()[:2]) for line in table] == [
        "xdna-ep float32", "xdna-ep int8", "faster-whisper float32", "faster-whisper int8"
    ]
    assert re.search(r"\d+\.\d\dx fw float32", table[0]), table[0]
    assert re.search(r"\d+\.\d\dx fw int8", table[1]), table[1]
    # fp32 engines on the same weights with the same greedy settings decode the same tokens
    assert table[0].rstrip().endswith("same"), table[0]
    assert table[2].rstrip().endswith("same"), table[2]
    assert all(line.rstrip().endswith("same") or "DIFFERENT: '" in line for line in table)


def test_joined_recording_has_every_clip_and_a_second_of_silence_after_each():
    clips = [AUDIO_DIR / "jfk.wav", AUDIO_DIR / "espeak_fox.wav"]
    label, samples = load_recording("+".join(str(clip) for clip in clips))
    parts = [load_audio(clip) for clip in clips]
    assert samples.size == sum(part.size for part in parts) + 2 * SAMPLE_RATE
    np.testing.assert_array_equal(samples[: parts[0].size], parts[0])
    assert not samples[parts[0].size : parts[0].size + SAMPLE_RATE].any()
    assert label == f"2 clips joined ({samples.size / SAMPLE_RATE:.1f} s)"


def test_word_error_rate_counts_words_after_normalising(tmp_path):
    soundfile.write(tmp_path / "a.wav", np.zeros(1600, dtype=np.float32), SAMPLE_RATE)
    references = {"a.wav": {"text": "The quick brown fox."}, "b.wav": {"text": None}}  # b: no reference, skipped
    (tmp_path / "references.json").write_text(json.dumps(references))
    engines = {
        "exact": lambda audio: ("the Quick, brown fox", []),
        "one wrong": lambda audio: ("the quick brown box", []),
    }
    rates, n_clips, n_words = word_error_rates(tmp_path, engines)
    assert (n_clips, n_words) == (1, 4)
    assert rates == {"exact": 0.0, "one wrong": 0.25}


def test_bad_options_are_rejected(capsys):
    assert main(["bench-transcribe", "--repeats", "0"]) == 2
    assert "repeats must be >= 1" in capsys.readouterr().err
    assert main(["bench-transcribe", "--threads", "-2"]) == 2
    assert "threads must be >= 0" in capsys.readouterr().err
