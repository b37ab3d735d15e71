"""shapes: which Whisper session a model is, and its tensor shapes at representative sizes."""

from __future__ import annotations

import re

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from real_sessions import model_folder, whisper_config
from whisper_variants import renamed

from xdna_ep.decoding import DecodingOptions
from xdna_ep.errors import ModelError
from xdna_ep.graph_passes.shapes import (
    DECODE_BATCH,
    DECODER,
    DECODER_WITH_PAST,
    ENCODER,
    representative_shapes,
    session_role,
)


@pytest.mark.parametrize(
    "session, role, attention_scores, assumed",
    [
        ("encoder_model", ENCODER, (1, "h", 1500, 1500), "batch_size=1"),
        ("decoder_model", DECODER, (1, "h", 4, 1500), "decoder_sequence_length=4 (prompt of about 4 tokens)"),
        ("decoder_with_past_model", DECODER_WITH_PAST, (5, "h", 1, 1500), "decoder_sequence_length=1 (one token per step)"),
        # the beams are decoder_with_past's batch: planned for the default beam search
        ("decoder_with_past_model", DECODER_WITH_PAST, (5, "h", 1, 1500), "batch_size=5 (a beam of 5, the default beam"),
    ],
)
def test_roles_and_representative_shapes_of_tiny_en(session, role, attention_scores, assumed):
    folder = model_folder("tiny.en")
    n_head = whisper_config(folder)["n_audio_head"]
    model = onnx.load(str(folder / f"{session}.onnx"), load_external_data=False)
    assert session_role(model) == role
    table = representative_shapes(model)
    assert assumed in table.assumptions
    # the last cross- (or encoder self-) attention's scores, at the representative sizes
    scores = [node.input[0] for node in model.graph.node if node.op_type == "Softmax"][-1]
    expected = tuple(n_head if dim == "h" else dim for dim in attention_scores)
    assert table.shape(scores) == expected
    assert table.is_float32(scores) is True


def test_decoder_with_past_is_planned_for_the_default_beam():
    # graph_passes cannot import the decoding layer: the constant is spelled twice and kept equal here
    assert DECODE_BATCH == DecodingOptions().beam_size


@pytest.mark.parametrize("session", ["encoder_model", "decoder_model", "decoder_with_past_model"])
def test_roles_sizes_and_fusions_come_from_structure_not_names(session):
    from xdna_ep.graph_passes.orchestrator import run_passes

    folder = model_folder("tiny.en")
    original = onnx.load(str(folder / f"{session}.onnx"))
    model = renamed(original)
    assert session_role(model) == session_role(original)
    sizes = re.findall(r"=(\d+ \([^)]*\))", representative_shapes(model).assumptions)  # "4 (prompt of ...)"
    assert sizes == re.findall(r"=(\d+ \([^)]*\))", representative_shapes(original).assumptions)
    _, want = run_passes(original, partition_nodes=False)
    _, got = run_passes(model, partition_nodes=False)
    assert got.kinds == want.kinds and got.fused_total > 0


def test_explicit_dims_set_the_planned_sizes():
    folder = model_folder("tiny.en")
    model = onnx.load(str(folder / "decoder_with_past_model.onnx"), load_external_data=False)
    table = representative_shapes(model, {"past_decoder_sequence_length": 17})
    assert "past_decoder_sequence_length=17 (given)" in table.assumptions
    scores = [node.input[0] for node in model.graph.node if node.op_type == "Softmax"][0]  # first self-attention
    assert table.shape(scores)[-1] == 18  # 17 past + 1 new


def test_a_failed_shape_inference_names_the_node():
    # ONNX Runtime's symbolic inference fails on a bare assert here (no message); the error names the node
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="the_matmul")], "bad",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.zeros((3, 2), np.float32), "w")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    with pytest.raises(ModelError, match="shape inference failed on bad: AssertionError.*the_matmul"):
        representative_shapes(model)
