"""int8: the MatMul weights of a model folder's graphs in 8 bits (MatMulNBits), cached in <folder>/int8/."""

from __future__ import annotations

import json
import os
import re
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from xdna_ep.errors import ModelError
from xdna_ep.models.quantize import (
    INT8_FOLDER,
    MANIFEST_FILE,
    WEIGHTS_FILE,
    check_compute_type,
    int8_folder,
    quantize_graph,
)

from conftest import AUDIO_DIR

K, N = 128, 48  # K: eight blocks of 16


def _toy_graph(weight: np.ndarray) -> onnx.ModelProto:
    """y = (x @ W) @ z: one MatMul with a constant weight (quantized), one over two inputs (left alone)."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("MatMul", ["h", "z"], ["y"])]
    graph = helper.make_graph(
        nodes, "toy",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, K]), helper.make_tensor_value_info("z", TensorProto.FLOAT, [N, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    return model


def _run(path, x, z) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x, "z": z})[0]


@pytest.fixture
def toy_folder(tmp_path):
    rng = np.random.default_rng(0)
    onnx.save(_toy_graph(rng.standard_normal((K, N)).astype(np.float32)), str(tmp_path / "encoder_model.onnx"))
    (tmp_path / "whisper_config.json").write_text("{}")
    return tmp_path


def test_constant_weight_matmul_becomes_8bit_and_stays_close(toy_folder, tmp_path):
    rng = np.random.default_rng(1)
    x, z = rng.standard_normal((2, K)).astype(np.float32), rng.standard_normal((N, 3)).astype(np.float32)
    target = tmp_path / "quantized.onnx"
    quantized = quantize_graph(toy_folder / "encoder_model.onnx")
    onnx.save(quantized, str(target))
    ops = [node.op_type for node in quantized.graph.node]
    assert ops == ["MatMulNBits", "MatMul"]  # the MatMul of two inputs has no weight to quantize
    expected, got = _run(toy_folder / "encoder_model.onnx", x, z), _run(target, x, z)
    # 8-bit weights and activations per block of 16: measured max error 0.4 % of max |y| (blocks of 32)
    assert np.abs(got - expected).max() <= 0.01 * np.abs(expected).max()
    assert not np.allclose(got, expected, rtol=0, atol=1e-6)  # it really computes in int8


def test_int8_folder_is_cached_and_follows_the_source(toy_folder):
    target = int8_folder(toy_folder)
    assert target == toy_folder / INT8_FOLDER
    assert sorted(path.name for path in target.iterdir()) == [
        "encoder_model.onnx", MANIFEST_FILE, WEIGHTS_FILE, "whisper_config.json"
    ]
    manifest = json.loads((target / MANIFEST_FILE).read_text())
    assert manifest["matmuls_quantized"] == {"encoder_model.onnx": 1}
    written = (target / "encoder_model.onnx").stat().st_mtime_ns
    assert int8_folder(toy_folder) == target
    assert (target / "encoder_model.onnx").stat().st_mtime_ns == written  # cached: not quantized again
    source = toy_folder / "encoder_model.onnx"
    os.utime(source, ns=(source.stat().st_atime_ns, source.stat().st_mtime_ns + 10**9))  # a re-export
    int8_folder(toy_folder)
    assert json.loads((target / MANIFEST_FILE).read_text())["sources"]["encoder_model.onnx"][1] == source.stat().st_mtime_ns
    # a weights file cut short (a full disk) or gone: quantized again, not handed to ONNX Runtime
    for damage in (lambda path: os.truncate(path, 100), os.remove):
        damage(target / WEIGHTS_FILE)
        int8_folder(toy_folder)
        assert (target / WEIGHTS_FILE).stat().st_size == json.loads((target / MANIFEST_FILE).read_text())["weights_bytes"] > 100


def test_weights_two_graphs_share_are_stored_once(toy_folder):
    rng = np.random.default_rng(1)
    x, z = rng.standard_normal((2, K)).astype(np.float32), rng.standard_normal((N, 3)).astype(np.float32)
    shutil.copyfile(toy_folder / "encoder_model.onnx", toy_folder / "decoder_model.onnx")  # the same weight
    target = int8_folder(toy_folder)
    # the K x N int8 weight and its scales, once (twice would be over 2 K N)
    assert K * N <= (target / WEIGHTS_FILE).stat().st_size < 2 * K * N
    assert (target / "decoder_model.onnx").stat().st_size < 2048  # nodes and scales, measured 1108 bytes
    np.testing.assert_array_equal(_run(target / "decoder_model.onnx", x, z), _run(target / "encoder_model.onnx", x, z))


def test_folder_without_graphs_or_with_a_corrupt_graph_is_refused(tmp_path):
    with pytest.raises(ModelError, match="no ONNX graph"):
        int8_folder(tmp_path)
    (tmp_path / "encoder_model.onnx").write_bytes(b"not a protobuf")
    with pytest.raises(ModelError, match="cannot read .*encoder_model.onnx"):
        int8_folder(tmp_path)
    assert not (tmp_path / INT8_FOLDER).exists()


@pytest.mark.parametrize("device", ["sim", "npu", "auto"])
def test_int8_is_refused_off_the_cpu_with_the_reason(device):
    with pytest.raises(ValueError, match=f"needs device 'cpu', not '{device}'.*bf16"):
        check_compute_type("int8", device)
    check_compute_type("float32", device)
    with pytest.raises(ValueError, match="unknown compute_type 'int4'"):
        check_compute_type("int4", "cpu")


def _normalise(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9' ]", " ", text.lower()).split())


def test_int8_tiny_en_transcribes_jfk():
    import xdna_ep

    model = xdna_ep.load_model("tiny.en", compute_type="int8")
    manifest = json.loads((model.folder / INT8_FOLDER / MANIFEST_FILE).read_text())
    assert all(count > 0 for count in manifest["matmuls_quantized"].values()), manifest
    # the encoder: q/k/v and fc1 of each of the 4 layers (fed by a LayerNorm) dynamic; fc2 and out_proj float32
    encoder = onnx.load(str(model.folder / INT8_FOLDER / "encoder_model.onnx"), load_external_data=False)
    ops = [node.op_type for node in encoder.graph.node]
    assert ops.count("MatMulInteger") == 16 and "MatMulNBits" not in ops, ops
    weights = {tensor.name for tensor in encoder.graph.initializer}
    float_projections = [node.name for node in encoder.graph.node if node.op_type == "MatMul" and node.input[1] in weights]
    assert len(float_projections) == 8 and all("fc2" in name or "out_proj" in name for name in float_projections)
    # the prompt decoder: the cross-attention K/V projections of the 4 layers (over the encoder states)
    # dynamic, the rest MatMulNBits; the step decoder has no cross-attention projection, so no dynamic one
    for file_name, dynamic in (("decoder_model.onnx", 8), ("decoder_with_past_model.onnx", 0)):
        decoder = onnx.load(str(model.folder / INT8_FOLDER / file_name), load_external_data=False)
        integer = [node.name for node in decoder.graph.node if node.op_type == "MatMulInteger"]
        assert len(integer) == dynamic and all("encoder_attn.k_proj" in n or "encoder_attn.v_proj" in n for n in integer), integer
    result = xdna_ep.transcribe(AUDIO_DIR / "jfk.wav", model, language="en", temperature=0.0)
    expected = "and so my fellow americans ask not what your country can do for you ask what you can do for your country"
    assert _normalise(result.text) == expected


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tiny.en", "base"])
def test_int8_word_error_rate_within_0_3_points_of_float32(name, references):
    import jiwer

    import xdna_ep
    from xdna_ep.bench_transcribe import GOLDEN_SETTINGS

    clips = {clip: _normalise(entry["text"]) for clip, entry in references.items() if entry.get("text")}
    rates = {}
    for compute_type in ("float32", "int8"):
        model = xdna_ep.load_model(name, compute_type=compute_type)
        texts = [_normalise(xdna_ep.transcribe(AUDIO_DIR / clip, model, **GOLDEN_SETTINGS).text) for clip in clips]
        rates[compute_type] = jiwer.wer(list(clips.values()), texts)
        del model
    # the bar; measured: tiny.en 4.14 % int8 vs 4.83 % float32, base 1.38 % both (145 words)
    assert rates["int8"] <= rates["float32"] + 0.003, rates
