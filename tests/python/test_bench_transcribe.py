"""bench-transcribe runs every engine on the same clip and reports agreement, not only time."""

from __future__ import annotations

import re

from xdna_ep.bench_transcribe import TranscribeBenchOptions, run_bench
from xdna_ep.cli import main

from conftest import AUDIO_DIR


def test_engines_agree_and_ratios_are_printed():
    clip = AUDIO_DIR / "librispeech-1995-1837-0001.wav"
    lines = run_bench(TranscribeBenchOptions(models=("tiny.en",), audio=(str(clip),), repeats=1))
    table = [line for line in lines if re.match(r"\s+(xdna-ep|faster-whisper)", line)]
    assert [line.split()[0] + " " + line.split()[1] for line in table] == [
        "xdna-ep cpu", "faster-whisper fp32", "faster-whisper int8"
    ]
    assert table[0].split()[3] == "1.00x"
    # fp32 engines on the same weights with the same greedy settings decode the same tokens
    assert table[1].rstrip().endswith("same"), table[1]


def test_bad_options_are_rejected(capsys):
    assert main(["bench-transcribe", "--repeats", "0"]) == 2
    assert "repeats must be >= 1" in capsys.readouterr().err
