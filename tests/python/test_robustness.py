"""Bad input gets a clear error or a sensible transcript, never a crash or a hallucinated paragraph:
broken model files and folders (a ModelError at load time naming what is wrong), audio edge cases
(non-finite samples, clipping, 8 and 48 kHz, 6 channels, 0.1 s, silence, noise), and long audio
(every clip's text once, in order, across 30-s window edges)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import soundfile
import soxr
from conftest import AUDIO_DIR
from onnx import TensorProto, helper, numpy_helper

import xdna_ep
from xdna_ep.audio import SAMPLE_RATE, load_audio
from xdna_ep.errors import AudioError, ModelError
from xdna_ep.models import registry

JFK_KEY_PHRASE = "ask not what your country can do for you"


def words(text: str) -> list[str]:
    """Lower-case words without punctuation."""
    return re.findall(r"[a-z0-9']+", text.lower())


def normalised(text: str) -> str:
    return " ".join(words(text))


# --- bad models ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_folder() -> Path:
    from real_sessions import model_folder

    return model_folder("tiny.en")


def model_copy(source: Path, target: Path, replace: dict[str, bytes | onnx.ModelProto | None]) -> Path:
    """``target``: the files of ``source`` (symlinked), with the files named in ``replace`` written from
    bytes, saved from a ModelProto, or left out (None)."""
    target.mkdir()
    for name in registry.MODEL_FILES:
        content = replace.get(name, ...)
        if content is None:
            continue
        if content is ...:
            (target / name).symlink_to(source / name)
        elif isinstance(content, onnx.ModelProto):
            onnx.save(content, str(target / name))
        else:
            (target / name).write_bytes(content)
    return target


@pytest.mark.parametrize("device", ["cpu", "sim"])
def test_a_truncated_onnx_file_is_a_model_error_naming_it(device, tiny_folder, tmp_path):
    half = (tiny_folder / registry.ENCODER_FILE).read_bytes()[:1_000_000]
    folder = model_copy(tiny_folder, tmp_path / "truncated", {registry.ENCODER_FILE: half})
    with pytest.raises(ModelError, match=re.escape(str(folder / registry.ENCODER_FILE))):
        xdna_ep.load_model(folder, device=device)


def test_a_file_that_is_not_onnx_is_a_model_error_naming_it(tiny_folder, tmp_path):
    folder = model_copy(tiny_folder, tmp_path / "text", {registry.DECODER_FILE: b"this is not an ONNX model\n"})
    with pytest.raises(ModelError, match=re.escape(str(folder / registry.DECODER_FILE))):
        xdna_ep.load_model(folder, device="cpu")


def test_a_missing_file_is_a_model_error_naming_it(tiny_folder, tmp_path):
    folder = model_copy(tiny_folder, tmp_path / "incomplete", {registry.TOKENIZER_FILE: None})
    with pytest.raises(ModelError, match=f"lacks {registry.TOKENIZER_FILE}"):
        xdna_ep.load_model(folder, device="cpu")


def test_a_renamed_encoder_input_is_a_model_error_naming_the_expected_one(tiny_folder, tmp_path):
    encoder = onnx.load(str(tiny_folder / registry.ENCODER_FILE))
    encoder.graph.input[0].name = "mel"
    for node in encoder.graph.node:
        node.input[:] = ["mel" if name == "input_features" else name for name in node.input]
    folder = model_copy(tiny_folder, tmp_path / "renamed", {registry.ENCODER_FILE: encoder})
    with pytest.raises(ModelError, match=r"encoder has inputs \['mel'\].*expected at least \['input_features'\]"):
        xdna_ep.load_model(folder, device="cpu")


def test_a_missing_past_input_is_a_model_error_counting_them(tiny_folder, tmp_path):
    """decoder_with_past_model with one past_key_values input turned into a constant: 15 past inputs, not 16."""
    decoder = onnx.load(str(tiny_folder / registry.DECODER_WITH_PAST_FILE))
    dropped = next(value for value in decoder.graph.input if value.name.startswith("past_key_values."))
    decoder.graph.input.remove(dropped)
    decoder.graph.initializer.append(numpy_helper.from_array(np.zeros((1, 6, 1, 64), np.float32), dropped.name))
    folder = model_copy(tiny_folder, tmp_path / "missing_input", {registry.DECODER_WITH_PAST_FILE: decoder})
    with pytest.raises(ModelError, match=r"takes 15 past_key_values inputs \(expected 16\)"):
        xdna_ep.load_model(folder, device="cpu")


def test_a_model_that_is_not_whisper_comes_back_from_compile_unchanged_with_zero_fusions(tmp_path):
    from xdna_ep.ep import registry as compiled_models
    from xdna_ep.ep.session import model_key

    weight = numpy_helper.from_array(np.ones((4, 4), np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Softmax", ["h"], ["y"])],
        "classifier",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 4])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    path = tmp_path / "classifier.onnx"
    onnx.save(model, str(path))
    compiled = xdna_ep.compile(path, device="sim")
    assert compiled.graph.SerializeToString() == model.graph.SerializeToString()
    report = compiled_models.lookup(model_key(compiled)).report
    assert report.fused_total == 0 and "not a Whisper" in report.note


# --- audio edge cases --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def jfk() -> np.ndarray:
    return load_audio(AUDIO_DIR / "jfk.wav")  # (176000,) float32 at 16 kHz


def write(path: Path, samples: np.ndarray, rate: int, subtype: str = "PCM_16") -> Path:
    soundfile.write(str(path), samples, rate, subtype=subtype)
    return path


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_samples_are_an_audio_error(bad, jfk, tmp_path, tiny_en_model):
    samples = jfk.copy()
    samples[1000:1010] = bad
    with pytest.raises(AudioError, match="10 of 176000 samples are NaN or infinite"):
        xdna_ep.transcribe(samples, tiny_en_model)
    path = write(tmp_path / "bad.wav", samples, SAMPLE_RATE, subtype="FLOAT")
    with pytest.raises(AudioError, match=re.escape(f"{path}: 10 of 176000 samples are NaN or infinite")):
        xdna_ep.transcribe(path, tiny_en_model)


@pytest.mark.parametrize(
    "case",
    ["clipped", "8 kHz", "48 kHz", "6 channels"],
)
def test_speech_in_unusual_formats_is_transcribed(case, jfk, tmp_path, tiny_en_model):
    if case == "clipped":  # 20 dB too loud, hard-clipped to 16-bit full scale
        path = write(tmp_path / "clipped.wav", np.clip(jfk * 10, -1, 1), SAMPLE_RATE)
        assert np.mean(np.abs(soundfile.read(str(path))[0]) > 0.99) > 0.05  # really clipped
    elif case == "8 kHz":
        path = write(tmp_path / "8k.wav", soxr.resample(jfk, SAMPLE_RATE, 8000), 8000)
    elif case == "48 kHz":
        path = write(tmp_path / "48k.wav", soxr.resample(jfk, SAMPLE_RATE, 48000), 48000)
    else:  # speech on the front pair, four silent channels (5.1 with the centre off)
        channels = np.stack([jfk, 0.5 * jfk] + [np.zeros_like(jfk)] * 4, axis=1)
        path = write(tmp_path / "6ch.wav", channels, SAMPLE_RATE)
    result = xdna_ep.transcribe(path, tiny_en_model, temperature=0)
    assert JFK_KEY_PHRASE in normalised(result.text)
    assert len(words(result.text)) <= 24  # the clip has 22 words: no invented sentence


def test_a_tenth_of_a_second_gives_at_most_a_few_words(jfk, tmp_path, tiny_en_model):
    path = write(tmp_path / "short.wav", jfk[SAMPLE_RATE : SAMPLE_RATE + SAMPLE_RATE // 10], SAMPLE_RATE)
    result = xdna_ep.transcribe(path, tiny_en_model)
    assert result.duration == pytest.approx(0.1, abs=1e-3)
    assert len(words(result.text)) <= 3


def test_shorter_than_one_frame_gives_no_text(tmp_path, tiny_en_model):
    result = xdna_ep.transcribe(write(tmp_path / "tiny.wav", np.full(100, 0.1, np.float32), SAMPLE_RATE), tiny_en_model)
    assert result.text == "" and result.segments == []


@pytest.mark.parametrize("seconds", [10, 40])  # 40: a full 30-s window of digital silence, then a partial one
def test_silence_gives_no_text(seconds, tmp_path, tiny_en_model):
    path = write(tmp_path / "silence.wav", np.zeros(seconds * SAMPLE_RATE, np.float32), SAMPLE_RATE)
    result = xdna_ep.transcribe(path, tiny_en_model)
    assert result.text == ""
    assert result.stats["skipped_no_speech"] == result.stats["windows"] == -(-seconds // 30)


@pytest.mark.parametrize("kind", ["white", "loud white", "brown", "mains hum"])
def test_noise_gives_no_words(kind, tmp_path, tiny_en_model):
    rng = np.random.default_rng(0)
    n = 10 * SAMPLE_RATE
    if kind == "white":
        samples = 0.1 * rng.standard_normal(n)
    elif kind == "loud white":
        samples = np.clip(0.5 * rng.standard_normal(n), -1, 1)
    elif kind == "brown":
        samples = np.cumsum(rng.standard_normal(n)) / 300
    else:
        samples = 0.3 * np.sin(2 * np.pi * 50 * np.arange(n) / SAMPLE_RATE)
    path = write(tmp_path / "noise.wav", samples.astype(np.float32), SAMPLE_RATE)
    # greedy: with the default beam 5 both xdna-ep and faster-whisper hear "You" in the mains hum (the
    # same tokens, avg logprob -0.983 against the -1 threshold, no_speech_prob 0.902); VAD is the remedy
    result = xdna_ep.transcribe(path, tiny_en_model, beam_size=1)
    assert words(result.text) == [], result.text


# --- long audio ------------------------------------------------------------------------------------

def build_long_recording(clips: list[str], minutes: float, gap_s: float = 1.5) -> tuple[np.ndarray, list[str]]:
    """The shared clips one after the other with ``gap_s`` of silence between them, repeated until
    ``minutes`` long; returns (samples (n,) float32 at 16 kHz, the clip order)."""
    decoded = {clip: load_audio(AUDIO_DIR / clip) for clip in clips}
    gap = np.zeros(int(gap_s * SAMPLE_RATE), np.float32)
    pieces, order, total = [], [], 0
    while total < minutes * 60 * SAMPLE_RATE:
        clip = clips[len(order) % len(clips)]
        pieces += [decoded[clip], gap]
        order.append(clip)
        total += decoded[clip].size + gap.size
    return np.concatenate(pieces), order


@pytest.mark.slow
def test_long_audio_keeps_every_clip_once_in_order_across_window_edges(tiny_en_model, goldens):
    clips = ["jfk.wav", "librispeech-1995-1837-0001.wav", "2412-153948-0000.flac", "espeak_stella.wav"]
    samples, order = build_long_recording(clips, minutes=2.5)
    edges = np.arange(30, samples.size / SAMPLE_RATE, 30)
    assert edges.size >= 4
    result = xdna_ep.transcribe(samples, tiny_en_model)
    text = normalised(result.text)
    # a phrase of each clip's isolated transcript (the middle words: the ends may merge with the gaps)
    phrases = {}
    for clip in clips:
        clip_words = words(goldens[clip]["tiny.en"]["text"])
        middle = len(clip_words) // 2
        phrases[clip] = " ".join(clip_words[middle - 2 : middle + 2])
    position = 0
    for clip in order:
        found = text.find(phrases[clip], position)
        assert found >= 0, f"{clip} ({phrases[clip]!r}) missing after character {position}: {text[position:]!r}"
        position = found + len(phrases[clip])
    for clip in clips:
        assert text.count(phrases[clip]) == order.count(clip), (clip, phrases[clip])


@pytest.mark.slow
def test_bench_memory_reports_the_peak_of_each_duration():
    from xdna_ep.bench import BenchOptions, bench_memory

    lines = list(bench_memory(BenchOptions(device="sim", models=("tiny.en",)), (0.25,)))
    assert lines[0].startswith("xdna-ep bench --memory 0.25 --device sim")
    loaded = re.match(r"tiny\.en: (\d+) MiB resident with the model loaded, (\d+) MiB after one clip$", lines[1])
    assert loaded, lines[1]
    measured = re.match(r"  0\.25 min: peak RSS (\d+) MiB \(\+\d+ MiB during .*, [-+]\d+ MiB left after it\), 1 windows", lines[2])
    assert measured, lines[2]
    assert int(measured.group(1)) >= int(loaded.group(1))  # the peak includes the loaded model
