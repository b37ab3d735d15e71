"""``xdna-ep transcribe`` on real files: batches past bad files, languages, the default printout, output
names, --version, --strict on the CPU, progress and verbose lines, and examples/transcribe.py."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from conftest import AUDIO_DIR, ROOT

from xdna_ep import __version__
from xdna_ep.cli import main
from xdna_ep.transcribe import output_stems

JFK = str(AUDIO_DIR / "jfk.wav")
JFK_FLAC = str(AUDIO_DIR / "jfk.flac")
SEGMENT_LINE = re.compile(r"^\[\d\d:\d\d\.\d{3} --> \d\d:\d\d\.\d{3}\] \S")


def test_a_batch_goes_on_past_bad_files_and_fails_at_the_end(tmp_path, capsys):
    not_audio = tmp_path / "notaudio.wav"
    not_audio.write_text("this is not audio\n")
    missing = tmp_path / "missing.wav"
    assert main(["transcribe", JFK, str(not_audio), str(missing), JFK_FLAC, "--plain"]) == 2
    captured = capsys.readouterr()
    # both good files were transcribed, the one after the bad ones too
    blocks = captured.out.split("==> ")[1:]
    assert [block.splitlines()[0] for block in blocks] == [f"{JFK} <==", f"{JFK_FLAC} <=="]
    assert all("ask not what your country can do for you" in block for block in blocks)
    errors = [line for line in captured.err.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: {missing}: audio file not found", f"error: {not_audio}: cannot decode {not_audio} as audio"
                      + errors[1].split("as audio", 1)[1]]
    assert "2 of 4 files failed" in captured.err and "Traceback" not in captured.err


@pytest.mark.parametrize("language", ["auto", "English", "EN", "en"])
def test_language_auto_and_names(capsys, language):
    assert main(["transcribe", JFK, "--language", language]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "Language: English (en)"  # tiny.en is English-only: nothing detected
    assert "ask not what your country" in out


def test_bad_language_is_refused_before_the_model_loads(capsys):
    # the model name is bad too: the language is checked first, so its error is the one reported
    assert main(["transcribe", JFK, "--language", "Klingon", "--model", "nosuch"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown language 'Klingon'") and "nosuch" not in err


def test_default_output_is_the_language_and_timestamped_segments(capsys):
    assert main(["transcribe", JFK]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "Language: English (en)"
    assert len(lines) >= 3 and all(SEGMENT_LINE.match(line) for line in lines[1:]), lines
    assert main(["transcribe", JFK, "--plain"]) == 0
    plain = capsys.readouterr().out.splitlines()
    # the default decoding is beam 5, which punctuates jfk as faster-whisper's beam 5 does ("And so, my")
    assert len(plain) == 1 and plain[0].startswith("And so, my fellow Americans")


def test_detected_language_is_printed_with_a_multilingual_model(capsys):
    assert main(["transcribe", JFK, "--model", "base"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "Detected language: English (en)"


def test_same_stem_outputs_do_not_overwrite_each_other(tmp_path, capsys):
    assert main(["transcribe", JFK, JFK_FLAC, "--output-dir", str(tmp_path), "--output-format", "json"]) == 0
    assert sorted(path.name for path in tmp_path.iterdir()) == ["jfk.flac.json", "jfk.wav.json"]
    for name in ("jfk.flac.json", "jfk.wav.json"):
        assert "ask not what your country" in json.loads((tmp_path / name).read_text())["text"]
    assert output_stems(["a/x.wav", "b/x.wav", "y.mp3", "c/z.wav", "z.flac"]) == ["x.wav-1", "x.wav-2", "y", "z.wav", "z.flac"]


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"xdna-ep {__version__}"


def test_strict_on_the_cpu_says_it_has_nothing_to_guard(capsys):
    assert main(["transcribe", JFK, "--strict", "--device", "cpu", "--plain"]) == 0
    assert "--strict has nothing to guard on --device cpu" in capsys.readouterr().err


def test_progress_and_verbose_print_on_separate_lines(capsys):
    assert main(["transcribe", JFK, "--progress", "--verbose"]) == 0
    err = capsys.readouterr().err
    segment_lines = [line for line in err.split("\n") if "-->" in line]
    assert len(segment_lines) >= 2
    for line in segment_lines:
        # what a terminal shows after the last carriage return: the segment alone, the bar cleared before it
        assert line.split("\r")[-1].startswith("["), repr(line)


def test_vad_and_batch_size_from_the_command_line(capsys):
    assert main(["transcribe", JFK, "--vad", "--vad-min-silence-duration-ms", "500", "--plain"]) == 0
    assert "ask not what your country" in capsys.readouterr().out
    assert main(["transcribe", JFK, "--batch-size", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert all(SEGMENT_LINE.match(line) for line in lines[1:]) and "ask not what your country" in lines[1]


def test_example_script_takes_arguments():
    script = str(ROOT / "examples" / "transcribe.py")
    done = subprocess.run([sys.executable, script, JFK, "--language", "English"], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert "ask not what your country" in done.stdout and "(en)" in done.stdout
    done = subprocess.run([sys.executable, script, JFK, "--language", "xx"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and done.stderr.startswith("error: unknown language 'xx'"), done.stderr


def test_english_only_model_refuses_other_languages_before_it_loads(capsys, monkeypatch):
    import xdna_ep.model

    def must_not_load(name_or_path="tiny.en", device="cpu", compute_type="float32", threads=0, **kwargs):
        # the parameters whose defaults the parser reads from WhisperModel's signature
        raise AssertionError("the model was loaded before the language was checked")

    monkeypatch.setattr(xdna_ep.model, "WhisperModel", must_not_load)
    assert main(["transcribe", JFK, "--language", "German"]) == 2
    assert capsys.readouterr().err.startswith("error: model tiny.en is English-only: language 'de'")


def test_missing_vad_model_is_named_before_the_model_loads(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("XDNA_EP_VAD_MODEL", str(tmp_path / "absent.onnx"))
    assert main(["transcribe", JFK, JFK_FLAC, "--vad"]) == 2
    err = capsys.readouterr().err
    assert err.count("error: ") == 1 and "absent.onnx is not a file" in err  # once, not once per file
