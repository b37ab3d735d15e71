"""graph_passes/onnx_attention.py: the encoder's attention chains as ONNX's Attention op for the CPU session."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from real_sessions import SESSIONS, model_folder, plain_options, real_inputs, whisper_config
from xdna_ep.graph_passes.onnx_attention import ATTENTION_OPSET, QUERY_BLOCK_ROWS, onnx_attention


def _ops(model: onnx.ModelProto) -> Counter:
    return Counter(node.op_type for node in model.graph.node)


def _run(model: onnx.ModelProto, feeds: dict, folder) -> np.ndarray:
    onnx.external_data_helper.load_external_data_for_model(model, str(folder))
    session = ort.InferenceSession(model.SerializeToString(), plain_options(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


@pytest.mark.parametrize("name", ["tiny.en", "base"])
def test_real_encoder_attention_becomes_onnx_attention_bit_for_bit(name):
    folder = model_folder(name)
    layers = whisper_config(folder)["n_audio_layer"]
    feeds = real_inputs(folder)["encoder_model"]
    plain = onnx.load(str(folder / "encoder_model.onnx"))
    rewritten, modified = onnx_attention(onnx.load(str(folder / "encoder_model.onnx")))
    assert modified
    ops = _ops(rewritten)
    # 1500 positions (3000 frames, static in the export) in blocks of 250 queries: 6 Attention nodes per layer
    blocks = 1500 // QUERY_BLOCK_ROWS
    assert ops["Attention"] == blocks * layers and ops["Slice"] == blocks * layers and ops["Softmax"] == 0, ops
    # the conv output's transpose is the only layout op left (5 per layer were the heads' split and merge)
    assert ops["Transpose"] == 1 and ops["Reshape"] == 0, ops
    assert next(o.version for o in rewritten.opset_import if o.domain == "") == ATTENTION_OPSET
    onnx.checker.check_model(rewritten)
    # ONNX Runtime's Attention kernel runs the chain's products and softmax in the chain's order:
    # measured max |difference| 0.0 on jfk.wav for both models, so equality is exact
    np.testing.assert_array_equal(_run(rewritten, feeds, folder), _run(plain, feeds, folder))


@pytest.mark.parametrize("session", SESSIONS[1:])
def test_decoders_are_left_as_they_are(session):
    # self-attention: a causal mask is added to the scores; cross-attention in decoder_model: the K and V
    # heads are present.* outputs; with past: they are graph inputs, not a Reshape + Transpose of a projection
    model = onnx.load(str(model_folder("tiny.en") / f"{session}.onnx"), load_external_data=False)
    before = model.SerializeToString()
    model, modified = onnx_attention(model)
    assert not modified and model.SerializeToString() == before


def _toy_attention(heads: int = 2, head_dim: int = 4, opset: int = 18, softmax_axis: int = -1, extra_op: str | None = None,
                   heads_output: bool = False, positions: int | str = "n", float16: bool = False) -> onnx.ModelProto:  # fmt: skip
    """x (1, n, h * d) -> three projections -> the head-split chain build.py writes -> (1, n, h * d)."""
    width = heads * head_dim
    rng = np.random.default_rng(0)
    dtype, elem_type = (np.float16, TensorProto.FLOAT16) if float16 else (np.float32, TensorProto.FLOAT)
    inits = [numpy_helper.from_array((rng.standard_normal((width, width)) * 0.3).astype(dtype), f"W{p}") for p in "qkv"]
    inits += [
        numpy_helper.from_array(np.array([0, -1, heads, head_dim], np.int64), "split"),
        numpy_helper.from_array(np.array([0, -1, width], np.int64), "merge"),
    ]
    nodes = []
    for p in "qkv":
        nodes += [
            helper.make_node("MatMul", ["x", f"W{p}"], [f"{p}3"]),
            helper.make_node("Reshape", [f"{p}3", "split"], [f"{p}r"]),
            helper.make_node("Transpose", [f"{p}r"], [f"{p}h"], perm=[0, 2, 1, 3]),
        ]
    nodes += [
        helper.make_node("Transpose", ["kh"], ["kt"], perm=[0, 1, 3, 2]),
        helper.make_node("MatMul", ["qh", "kt"], ["scores"]),
        helper.make_node("Softmax", ["scores"], ["probs"], axis=softmax_axis),
        helper.make_node("MatMul", ["probs", "vh"], ["o"]),
        helper.make_node("Transpose", ["o"], ["ot"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["ot", "merge"], ["att"]),
    ]
    if extra_op:
        nodes.append(helper.make_node(extra_op, ["att"], ["y"]))
    else:
        nodes.append(helper.make_node("Identity", ["att"], ["y"]))
    outputs = [helper.make_tensor_value_info("y", elem_type, None)]
    if heads_output:
        outputs.append(helper.make_tensor_value_info("kh", elem_type, None))
    graph = helper.make_graph(nodes, "toy", [helper.make_tensor_value_info("x", elem_type, [1, positions, width])], outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 9 if opset < 23 else 11
    return model


def test_toy_chain_is_rewritten_and_computes_the_same():
    model = _toy_attention()
    x = np.random.default_rng(1).standard_normal((1, 5, 8)).astype(np.float32)
    expected = ort.InferenceSession(model.SerializeToString(), plain_options(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    rewritten, modified = onnx_attention(model)
    assert modified and _ops(rewritten) == Counter({"MatMul": 3, "Attention": 1, "Identity": 1})
    assert {init.name for init in rewritten.graph.initializer} == {"Wq", "Wk", "Wv"}  # the chain's shapes went
    got = ort.InferenceSession(rewritten.SerializeToString(), plain_options(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)  # measured 0.0; 1e-6 leaves room for summation order


def test_a_static_query_length_is_cut_into_blocks_of_rows():
    model = _toy_attention(positions=2 * QUERY_BLOCK_ROWS + 100)
    x = np.random.default_rng(2).standard_normal((1, 2 * QUERY_BLOCK_ROWS + 100, 8)).astype(np.float32)
    expected = ort.InferenceSession(model.SerializeToString(), plain_options(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    rewritten, modified = onnx_attention(model)
    assert modified and _ops(rewritten)["Attention"] == 3 and _ops(rewritten)["Slice"] == 3  # 250 + 250 + 100 rows
    got = ort.InferenceSession(rewritten.SerializeToString(), plain_options(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)  # the same rows computed alike: measured 0.0


@pytest.mark.parametrize(
    "settings, why",
    [
        (dict(softmax_axis=2), "a Softmax over another axis than the last is another computation"),
        (dict(heads_output=True), "the K heads are read outside the chain (a graph output)"),
        (dict(extra_op="Gelu", opset=20), "an op whose meaning at opset 23 is not checked (Gelu, opset 20)"),
        (dict(opset=11), "before opset 13 the softmax flattens its input"),
        (dict(float16=True), "ONNX Runtime's CPU Attention is used for float32 only"),
    ],
)
def test_other_forms_are_left_unchanged(settings, why):
    model = _toy_attention(**settings)
    before = model.SerializeToString()
    model, modified = onnx_attention(model)
    assert not modified and model.SerializeToString() == before, why
