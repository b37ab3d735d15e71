"""The model context: loading by name or folder, dimensions, session creation and its errors."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from xdna_ep.errors import ModelError
from xdna_ep.model import DEVICES, ModelDims, WhisperModel, create_session
from xdna_ep.models import registry


def test_device_names_are_the_sessions():
    from xdna_ep.ep.session import DEVICES as SESSION_DEVICES

    assert DEVICES == SESSION_DEVICES


def test_dims_and_sessions_of_tiny_en(tiny_en_model):
    dims = tiny_en_model.dims
    assert (dims.n_mels, dims.n_audio_ctx, dims.n_audio_state, dims.n_text_layer, dims.n_vocab) == (80, 1500, 384, 4, 51864)
    assert not tiny_en_model.is_multilingual and tiny_en_model.device == "cpu"
    assert tiny_en_model.encoder.get_providers() == ["CPUExecutionProvider"]
    features = tiny_en_model.encode(np.zeros((80, 3000), dtype=np.float32))
    assert features.shape == (1, 1500, 384) and features.dtype == np.float32
    with pytest.raises(ValueError, match=r"encoder input must be \(batch, 80, 3000\)"):
        tiny_en_model.encode(np.zeros((80, 2999), dtype=np.float32))


def test_a_model_folder_loads_and_an_incomplete_one_is_named(tmp_path):
    folder = registry.ensure_model("tiny.en")
    model = WhisperModel(folder)
    assert model.folder == folder and model.name == "tiny.en"
    incomplete = tmp_path / "partial"
    incomplete.mkdir()
    shutil.copy(folder / registry.CONFIG_FILE, incomplete)
    with pytest.raises(ModelError, match="lacks encoder_model.onnx"):
        WhisperModel(incomplete)


def test_config_without_dimensions(tmp_path):
    with pytest.raises(ModelError, match="lacks the model dimensions n_audio_ctx, .*n_text_ctx"):
        ModelDims.from_config({"n_mels": 80}, tmp_path / "whisper_config.json")


def test_unknown_device_and_corrupt_onnx(tmp_path):
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        WhisperModel("tiny.en", device="gpu")
    corrupt = tmp_path / "encoder_model.onnx"
    corrupt.write_bytes(b"not a protobuf")
    with pytest.raises(ModelError, match="ONNX Runtime cannot load"):
        create_session(corrupt, "cpu")


def test_the_prompt_step_computes_only_the_logits_asked_for(tiny_en_model):
    from xdna_ep.audio import log_mel_spectrogram, pad_or_trim
    from conftest import AUDIO_DIR

    model = tiny_en_model
    features = model.encode(pad_or_trim(log_mel_spectrogram(str(AUDIO_DIR / "jfk.wav"))))
    prompt = np.array([[model.tokenizer.sot_prev, 400, 1000, 2000, model.tokenizer.sot, model.tokenizer.no_timestamps]])
    assert model._reads_positions  # the exported decoder_model takes logits_positions
    full = model.decode_step(model.new_decoder_state(features), prompt)  # (1, 6, n_vocab)
    state = model.new_decoder_state(features)
    read = model.decode_step(state, prompt, positions=[4, -1])
    assert read.shape == (1, 2, model.dims.n_vocab) and state.n_tokens == 6
    # the same rows of the same product; the smaller GEMM may block its sums differently (measured 0.0)
    np.testing.assert_allclose(read, full[:, [4, -1]], rtol=0, atol=1e-5)
    next_step = model.decode_step(state, np.array([[int(read[0, -1].argmax())]]), positions=[-1])
    assert next_step.shape == (1, 1, model.dims.n_vocab)
    for bad in ([], [6], [-7]):
        with pytest.raises(ValueError, match="logit positions must be in"):
            model.decode_step(model.new_decoder_state(features), prompt, positions=bad)


def test_threads_reach_the_sessions_and_bad_values_are_named(tmp_path):
    model = WhisperModel("tiny.en", threads=1)
    for session in (model.encoder, model.decoder, model.decoder_with_past):
        assert session.get_session_options().intra_op_num_threads == 1
    with pytest.raises(ValueError, match="threads must be >= 0"):
        create_session(registry.ensure_model("tiny.en") / registry.ENCODER_FILE, "cpu", threads=-1)


def test_int8_is_a_cpu_compute_type(capsys, tmp_path):
    from xdna_ep.cli import main

    with pytest.raises(ValueError, match="compute_type 'int8' quantizes the CPU graphs and needs device 'cpu', not 'sim'"):
        WhisperModel("tiny.en", device="sim", compute_type="int8")
    audio = registry.ensure_model("tiny.en")  # any existing file: the refusal comes before decoding
    assert main(["transcribe", str(audio / registry.CONFIG_FILE), "--device", "npu", "--compute-type", "int8"]) == 2
    assert "the NPU path computes in bf16" in capsys.readouterr().err
    assert main(["transcribe", str(audio / registry.CONFIG_FILE), "--threads", "-1"]) == 2
    assert "threads must be >= 0" in capsys.readouterr().err
