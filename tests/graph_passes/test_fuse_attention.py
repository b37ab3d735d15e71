"""fuse_attention: exporter variants on small graphs (numerics checked with ONNX Runtime before and
after, its optimizations off), rejected candidates with their reasons, and the counts on real models."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from real_sessions import model_folder, plain_options, run_x, whisper_config

from xdna_ep.ep.session import bind, session_options
from xdna_ep.graph_passes import xdna_ops
from xdna_ep.graph_passes.fuse_attention import fuse_attention
from xdna_ep.graph_passes.match_log import MatchLog
from xdna_ep.graph_passes.orchestrator import run_passes
from xdna_ep.graph_passes.shapes import representative_shapes

N_HEAD, HEAD_DIM = 2, 4
D = N_HEAD * HEAD_DIM


def attention_block(variant: str, mask: str | None = None) -> onnx.ModelProto:
    """x (1, n, D) -> multi-head self-attention -> (1, n, D), written the way ``variant`` says.

    ``mask="input_dependent"`` adds the causal mask plus a graph input ``m`` (1, 1, n, n);
    ``variant="mqa"``: K and V have one head, broadcast over Q's (multi-query attention).
    """
    rng = np.random.default_rng(1)
    kv_width = HEAD_DIM if variant == "mqa" else D
    inits = [
        numpy_helper.from_array(rng.standard_normal((D, D if c == "q" else kv_width)).astype(np.float32), f"w{c}")
        for c in "qkv"
    ]
    scale = 1.0 / math.sqrt(HEAD_DIM)
    nodes = []

    def node(op, inputs, **attrs):
        out = f"t{len(nodes)}"
        nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    def const(value, dtype=np.float32):
        return node("Constant", [], value=numpy_helper.from_array(np.array(value, dtype=dtype)))

    heads = const([1, -1, N_HEAD, HEAD_DIM], np.int64)
    q, k, v = (node("MatMul", ["x", f"w{c}"]) for c in "qkv")
    kv_heads = const([1, -1, 1, HEAD_DIM], np.int64) if variant == "mqa" else heads
    v4 = node("Transpose", [node("Reshape", [v, kv_heads])], perm=[0, 2, 1, 3])
    if variant == "mqa":
        q4 = node("Transpose", [node("Reshape", [q, heads])], perm=[0, 2, 1, 3])
        k_t = node("Transpose", [node("Reshape", [k, kv_heads])], perm=[0, 2, 3, 1])  # (1, 1, d, n)
        scores = node("Mul", [node("MatMul", [q4, k_t]), const(scale)])
    elif variant == "scale_on_q_before_reshape":  # optimum's Whisper export (plus SDPA's * 1.0)
        q4 = node("Transpose", [node("Reshape", [node("Mul", [q, const(scale)]), heads])], perm=[0, 2, 1, 3])
        k_t = node("Transpose", [node("Reshape", [k, heads])], perm=[0, 2, 3, 1])
        scores = node("MatMul", [node("Mul", [q4, const(1.0)]), node("Mul", [k_t, const(1.0)])])
    elif variant == "div_on_scores":
        q4 = node("Transpose", [node("Reshape", [q, heads])], perm=[0, 2, 1, 3])
        k4 = node("Transpose", [node("Reshape", [k, heads])], perm=[0, 2, 1, 3])
        k_t = node("Transpose", [k4], perm=[0, 1, 3, 2])
        scores = node("Div", [node("MatMul", [q4, k_t]), const(math.sqrt(HEAD_DIM))])
    elif variant == "sqrt_scale_on_both":  # PyTorch SDPA with a scale
        q4 = node("Transpose", [node("Reshape", [q, heads])], perm=[0, 2, 1, 3])
        k_t = node("Transpose", [node("Reshape", [k, heads])], perm=[0, 2, 3, 1])
        root = math.sqrt(scale)
        scores = node("MatMul", [node("Mul", [const(root), q4]), node("Mul", [k_t, const(root)])])
    elif variant in ("k_t_through_3d", "k_t_not_a_transpose"):  # torch dynamo's SDPA: K^T via (b * h, n, d)
        q4 = node("Transpose", [node("Reshape", [node("Mul", [q, const(scale)]), heads])], perm=[0, 2, 1, 3])
        k4 = node("Transpose", [node("Reshape", [k, heads])], perm=[0, 2, 1, 3])
        # k_t_not_a_transpose merges to (h, d, n), reading K's memory as if it were K^T: no transposition
        merge = [N_HEAD, -1, HEAD_DIM] if variant == "k_t_through_3d" else [N_HEAD, HEAD_DIM, -1]
        swapped = node("Transpose", [node("Reshape", [k4, const(merge, np.int64)])], perm=[0, 2, 1])
        k_t = node("Reshape", [swapped, const([1, N_HEAD, HEAD_DIM, -1], np.int64)])
        scores = node("MatMul", [q4, k_t])
    elif variant == "scale_on_k":
        q4 = node("Transpose", [node("Reshape", [q, heads])], perm=[0, 2, 1, 3])
        k_t = node("Transpose", [node("Reshape", [node("Mul", [k, const(scale)]), heads])], perm=[0, 2, 3, 1])
        scores = node("MatMul", [q4, k_t])
    else:
        raise ValueError(variant)
    if mask is not None:
        n = node("Gather", [node("Shape", ["x"]), const(1, np.int64)], axis=0)
        positions = node("Range", [const(0, np.int64), n, const(1, np.int64)])
        rows = node("Unsqueeze", [positions, const([1], np.int64)])
        cols = node("Unsqueeze", [positions, const([0], np.int64)])
        visible = node("GreaterOrEqual" if mask == "anti_causal" else "LessOrEqual", [cols, rows])
        bias = node("Where", [visible, const(0.0), const(-np.inf)])
        if mask == "input_dependent":  # causal where m is 0, which is all a probe of zeros would see
            bias = node("Add", [bias, "m"])
        scores = node("Add", [scores, bias])
    probs = node("Softmax", [scores], axis=-1)
    out = node("MatMul", [probs, v4])
    merged = node("Reshape", [node("Transpose", [out], perm=[0, 2, 1, 3]), const([1, -1, D], np.int64)])
    nodes.append(helper.make_node("Identity", [merged], ["y"]))
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "decoder_sequence_length", D])]
    if mask == "input_dependent":
        n = "decoder_sequence_length"
        inputs.append(helper.make_tensor_value_info("m", TensorProto.FLOAT, [1, 1, n, n]))
    graph = helper.make_graph(
        nodes, variant, inputs,
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "decoder_sequence_length", D])], inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    return model


def fuse_and_run(model: onnx.ModelProto, x: np.ndarray) -> tuple[onnx.ModelProto, MatchLog, np.ndarray]:
    log = MatchLog()
    fused, _ = fuse_attention(onnx.ModelProto.FromString(model.SerializeToString()), representative_shapes(model), log)
    onnx.checker.check_model(fused)
    bound = bind(fused, device="cpu")
    return fused, log, run_x(bound, x, session_options("cpu", base=plain_options()))


@pytest.mark.parametrize("variant", ["scale_on_q_before_reshape", "div_on_scores", "sqrt_scale_on_both", "scale_on_k", "k_t_through_3d"])
@pytest.mark.parametrize("mask", [None, "causal"])
def test_variants_fuse_and_compute_the_same(variant, mask):
    model = attention_block(variant, mask)
    x = np.random.default_rng(2).standard_normal((1, 5, D)).astype(np.float32)
    expected = run_x(model, x)
    fused, log, actual = fuse_and_run(model, x)
    attention = [n for n in fused.graph.node if n.domain == xdna_ops.DOMAIN and n.op_type == xdna_ops.ATTENTION]
    assert len(attention) == 1, log.rejections
    attrs = xdna_ops.attributes(attention[0])
    assert float(attrs["scale"]) == pytest.approx(1.0 / math.sqrt(HEAD_DIM), rel=1e-7)
    assert attrs["causal"] == (1 if mask else 0)
    assert attrs["kind"] == ("causal_self" if mask else "self")
    assert not [n for n in fused.graph.node if n.op_type == "Softmax" and n.domain == ""]
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-5)


def test_a_mask_that_is_not_causal_is_rejected_with_the_reason():
    model = attention_block("scale_on_q_before_reshape", mask="anti_causal")
    x = np.random.default_rng(3).standard_normal((1, 4, D)).astype(np.float32)
    fused, log, actual = fuse_and_run(model, x)
    assert not [n for n in fused.graph.node if n.domain == xdna_ops.DOMAIN]
    assert len(log.rejections) == 1 and "not causal" in log.rejections[0].reason
    np.testing.assert_allclose(actual, run_x(model, x), rtol=0, atol=0)


def test_a_3d_reshape_that_is_no_transpose_of_k_is_rejected_with_the_reason():
    model = attention_block("k_t_not_a_transpose")
    x = np.random.default_rng(3).standard_normal((1, 5, D)).astype(np.float32)
    fused, log, actual = fuse_and_run(model, x)
    assert not [n for n in fused.graph.node if n.domain == xdna_ops.DOMAIN]
    assert len(log.rejections) == 1 and "not produced by a Transpose of K" in log.rejections[0].reason
    np.testing.assert_array_equal(actual, run_x(model, x))


def test_probabilities_as_a_graph_output_are_rejected_with_the_reason():
    model = attention_block("div_on_scores")
    softmax = next(n for n in model.graph.node if n.op_type == "Softmax")
    model.graph.output.append(helper.make_tensor_value_info(softmax.output[0], TensorProto.FLOAT, None))
    log = MatchLog()
    _, modified = fuse_attention(model, representative_shapes(model), log)
    assert not modified
    assert "graph output" in log.rejections[0].reason


def test_a_mask_that_depends_on_input_values_is_rejected_with_the_reason():
    model = attention_block("div_on_scores", mask="input_dependent")
    log = MatchLog()
    fused, modified = fuse_attention(model, representative_shapes(model), log)
    assert not modified and not [n for n in fused.graph.node if n.domain == xdna_ops.DOMAIN]
    assert len(log.rejections) == 1
    assert "depends on the values of input 'm'" in log.rejections[0].reason


def test_multi_query_attention_fuses_with_k_and_v_expanded_to_the_query_heads():
    model = attention_block("mqa")
    x = np.random.default_rng(4).standard_normal((1, 5, D)).astype(np.float32)
    fused, log, actual = fuse_and_run(model, x)
    (attention,) = [n for n in fused.graph.node if n.domain == xdna_ops.DOMAIN]
    assert not log.rejections
    expanded = {n.output[0] for n in fused.graph.node if n.op_type == "Expand"}
    assert set(attention.input[1:]) <= expanded  # K and V of one head, expanded to Q's 2
    assert xdna_ops.attributes(attention)["kind"] == "self"
    np.testing.assert_allclose(actual, run_x(model, x), rtol=0, atol=1e-5)  # as the other variants
    assert not np.isnan(actual).any()


def test_k_of_one_head_with_v_of_all_heads_is_refused_with_the_reason():
    # Q and V of 2 heads, K of one: MatMul broadcasts K alone, which is not multi-query attention
    model = attention_block("mqa")
    v_projection = next(n for n in model.graph.node if n.op_type == "MatMul" and n.input[1] == "wv")
    v_reshape = next(n for n in model.graph.node if n.op_type == "Reshape" and n.input[0] == v_projection.output[0])
    q_heads_shape = next(n for n in model.graph.node if n.op_type == "Reshape" and n.input[0] == "t1").input[1]
    v_reshape.input[1] = q_heads_shape  # V split into Q's 2 heads
    wv = next(init for init in model.graph.initializer if init.name == "wv")
    wv.CopyFrom(numpy_helper.from_array(np.ones((D, D), np.float32), "wv"))
    log = MatchLog()
    _, modified = fuse_attention(model, representative_shapes(model), log)
    assert not modified and "differ in batch or heads" in log.rejections[0].reason


def opset_11_block(axis: int | None) -> onnx.ModelProto:
    """The div_on_scores block at opset 11, its Softmax with ``axis`` (None: no attribute, default 1)."""
    model = attention_block("div_on_scores")
    softmax = next(n for n in model.graph.node if n.op_type == "Softmax")
    del softmax.attribute[:]
    if axis is not None:
        softmax.attribute.append(helper.make_attribute("axis", axis))
    del model.opset_import[:]
    model.opset_import.append(helper.make_opsetid("", 11))
    return model


def test_an_opset_11_softmax_with_its_default_axis_is_not_fused_as_attention():
    # opset 11 Softmax without axis flattens (b, h, n_q, n_kv) at axis 1: a softmax over h * n_q * n_kv
    model = opset_11_block(None)
    x = np.random.default_rng(5).standard_normal((1, 5, D)).astype(np.float32)
    fused, log, actual = fuse_and_run(model, x)
    assert not [n for n in fused.graph.node if n.domain == xdna_ops.DOMAIN]
    assert "default axis 1" in log.rejections[0].reason and "opset 11" in log.rejections[0].reason
    np.testing.assert_array_equal(actual, run_x(model, x))


def test_an_opset_11_softmax_on_the_last_axis_fuses_and_computes_the_same():
    model = opset_11_block(3)
    x = np.random.default_rng(5).standard_normal((1, 5, D)).astype(np.float32)
    fused, log, actual = fuse_and_run(model, x)
    assert len([n for n in fused.graph.node if n.domain == xdna_ops.DOMAIN]) == 1, log.rejections
    np.testing.assert_allclose(actual, run_x(model, x), rtol=0, atol=1e-5)  # as the opset-18 variants


@pytest.mark.parametrize("name", ["tiny.en", "base"])
def test_real_models_fuse_every_attention(name):
    folder = model_folder(name)
    config = whisper_config(folder)
    expected = {
        "encoder_model": {"attention.self": config["n_audio_layer"]},
        "decoder_model": {"attention.causal_self": config["n_text_layer"], "attention.cross": config["n_text_layer"]},
        "decoder_with_past_model": {
            "attention.causal_self": config["n_text_layer"],
            "attention.cross": config["n_text_layer"],
        },
    }
    for session, kinds in expected.items():
        model = onnx.load(str(folder / f"{session}.onnx"))
        fused, report = run_passes(model, partition_nodes=False)
        found = {kind: count for kind, count in report.kinds.items() if kind.startswith("attention.")}
        assert found == kinds, (session, report.rejections)
        assert not [r for r in report.rejections if r.pass_name == "fuse_attention"]
        # decoder self-attention with past: the Concat of past and new K/V stays, present.* still produced
        produced = {out for node in fused.graph.node for out in node.output}
        assert {out.name for out in fused.graph.output} <= produced


def onnx_attention_model(rank: int, **attrs) -> onnx.ModelProto:
    """ONNX's Attention op (opset 23) on q, k, v inputs: (1, 2, 5, 4) each, or (1, 5, 8) with 2 heads."""
    shape = [1, N_HEAD, 5, HEAD_DIM] if rank == 4 else [1, 5, D]
    if rank == 3:
        attrs = {"q_num_heads": N_HEAD, "kv_num_heads": N_HEAD, **attrs}
    graph = helper.make_graph(
        [helper.make_node("Attention", ["q", "k", "v"], ["y"], name="attention", **attrs)],
        "onnx_attention",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name in "qkv"],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])
    model.ir_version = 10
    return model


@pytest.mark.parametrize("rank", [3, 4])
@pytest.mark.parametrize("placement", ["npu", "cpu"])
def test_onnx_attention_fuses_and_computes_the_same_on_either_placement(rank, placement):
    model = onnx_attention_model(rank, is_causal=1, scale=0.3)
    rng = np.random.default_rng(9)
    feeds = {name: rng.standard_normal([d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]).astype(np.float32) for name in "qkv"}
    stock = ort.InferenceSession(model.SerializeToString(), plain_options(), providers=["CPUExecutionProvider"])
    fused, report = run_passes(onnx.ModelProto.FromString(model.SerializeToString()), placement=placement, any_model=True)
    assert report.kinds == {"attention.causal_self": 1}
    onnx.checker.check_model(fused)
    xdna = [n for n in fused.graph.node if n.domain == xdna_ops.DOMAIN]
    assert len(xdna) == (1 if placement == "npu" else 0)
    session = ort.InferenceSession(
        bind(fused, device="cpu").SerializeToString(), session_options(base=plain_options()), providers=["CPUExecutionProvider"]
    )
    # fp32 reference vs ORT's kernel: measured max difference 1.2e-7 on these inputs
    np.testing.assert_allclose(session.run(None, feeds)[0], stock.run(None, feeds)[0], rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "attrs, reason",
    [({"softcap": 2.0}, "softcap"), ({"left_window_size": 2}, "left_window_size"), ({"qk_matmul_output_mode": 1}, "qk_matmul_output_mode")],
)
def test_onnx_attention_with_what_xdna_does_not_compute_is_refused_with_the_reason(attrs, reason):
    model = onnx_attention_model(4, **attrs)
    log = MatchLog()
    _, modified = fuse_attention(model, representative_shapes(model), log)
    assert not modified and reason in log.rejections[0].reason


def contrib_mha_model(extra_inputs: int = 0) -> onnx.ModelProto:
    """com.microsoft MultiHeadAttention on q, k, v (1, 5, 8), 2 heads, a constant bias (24,); with
    ``extra_inputs`` 1 also a key_padding_mask (1, 5) int32."""
    bias = numpy_helper.from_array(np.random.default_rng(10).standard_normal(3 * D).astype(np.float32), "bias")
    inputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 5, D]) for name in "qkv"]
    node_inputs = ["q", "k", "v", "bias"]
    if extra_inputs:
        inputs.append(helper.make_tensor_value_info("mask", TensorProto.INT32, [1, 5]))
        node_inputs.append("mask")
    graph = helper.make_graph(
        [helper.make_node("MultiHeadAttention", node_inputs, ["y"], name="mha", domain="com.microsoft", num_heads=N_HEAD)],
        "contrib_mha", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5, D])], [bias],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 10
    return model


def onnx_attention_with_mask(mask: str) -> onnx.ModelProto:
    """Self-attention of x (1, 2, n, 4) through ONNX's Attention with an attn_mask computed from n alone:
    "causal_bool" (True = attend, torch's dynamo export at opset 23), "causal_float" (0 / -inf added),
    "anti_causal_bool"."""
    nodes = []

    def node(op, inputs, **attrs):
        out = f"t{len(nodes)}"
        nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    def const(value, dtype):
        return node("Constant", [], value=numpy_helper.from_array(np.array(value, dtype=dtype)))

    n = node("Shape", ["x"], start=2, end=3)
    positions = node("Range", [const(0, np.int64), node("Squeeze", [n]), const(1, np.int64)])
    rows = node("Unsqueeze", [positions, const([1], np.int64)])
    cols = node("Unsqueeze", [positions, const([0], np.int64)])
    visible = node("GreaterOrEqual" if mask.startswith("anti") else "LessOrEqual", [cols, rows])  # (n, n)
    if mask == "causal_float":
        visible = node("Where", [visible, const(0.0, np.float32), const(-np.inf, np.float32)])
    # Q and K from the same states; Q's shape known only through its Reshape to Shape(x), which ONNX's
    # own shape inference does not follow (ONNX Runtime's symbolic inference does)
    q = node("Reshape", [node("Mul", ["x", const(1.0, np.float32)]), node("Shape", ["x"])])
    nodes.append(helper.make_node("Attention", [q, "x", "x", visible], ["y"], name="attention", scale=0.3))
    shape = [1, N_HEAD, "n", HEAD_DIM]
    graph = helper.make_graph(
        nodes, "onnx_attention_mask",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])
    model.ir_version = 10
    return model


@pytest.mark.parametrize("placement", ["npu", "cpu"])
def test_contrib_multihead_attention_fuses_and_computes_the_same_on_either_placement(placement):
    model = contrib_mha_model()
    rng = np.random.default_rng(11)
    feeds = {name: rng.standard_normal((1, 5, D)).astype(np.float32) for name in "qkv"}
    stock = ort.InferenceSession(model.SerializeToString(), plain_options(), providers=["CPUExecutionProvider"])
    fused, report = run_passes(onnx.ModelProto.FromString(model.SerializeToString()), placement=placement, any_model=True)
    assert report.kinds["attention.cross"] == 1, report.rejections  # q, k, v are separate inputs: cross
    assert len([n for n in fused.graph.node if n.domain == xdna_ops.DOMAIN and n.op_type == xdna_ops.ATTENTION]) == (placement == "npu")
    session = ort.InferenceSession(
        bind(fused, device="cpu").SerializeToString(), session_options(base=plain_options()), providers=["CPUExecutionProvider"]
    )
    # fp32 reference vs ORT's contrib kernel: measured max difference 3.6e-7 (npu placement), 0 (cpu: the contrib node itself)
    np.testing.assert_allclose(session.run(None, feeds)[0], stock.run(None, feeds)[0], rtol=0, atol=1e-6)


def test_contrib_multihead_attention_with_a_key_padding_mask_is_refused_with_the_reason():
    model = contrib_mha_model(extra_inputs=1)
    log = MatchLog()
    _, modified = fuse_attention(model, representative_shapes(model), log)
    assert not modified and "it has a key_padding_mask input" in log.rejections[0].reason


@pytest.mark.parametrize("mask", ["causal_bool", "causal_float"])
@pytest.mark.parametrize("placement", ["npu", "cpu"])
def test_onnx_attention_with_a_causal_mask_fuses_and_computes_the_same(mask, placement):
    model = onnx_attention_with_mask(mask)
    shapes = representative_shapes(model)  # ONNX Runtime's symbolic inference alone reads Attention as its contrib op
    assert shapes.shape("y") == shapes.shape("x") and len(shapes.shape("x")) == 4
    x = np.random.default_rng(10).standard_normal((1, N_HEAD, 5, HEAD_DIM)).astype(np.float32)
    stock = ort.InferenceSession(model.SerializeToString(), plain_options(), providers=["CPUExecutionProvider"])
    fused, report = run_passes(onnx.ModelProto.FromString(model.SerializeToString()), placement=placement, any_model=True)
    assert report.kinds == {"attention.causal_self": 1}, report.rejections
    xdna = [n for n in fused.graph.node if n.domain == xdna_ops.DOMAIN]
    assert len(xdna) == (1 if placement == "npu" else 0)
    if xdna:
        assert xdna_ops.attributes(xdna[0])["causal"] == 1
    session = ort.InferenceSession(
        bind(fused, device="cpu").SerializeToString(), session_options(base=plain_options()), providers=["CPUExecutionProvider"]
    )
    # fp32 reference vs ORT's kernel, as for the unmasked op above
    np.testing.assert_allclose(session.run(None, {"x": x})[0], stock.run(None, {"x": x})[0], rtol=0, atol=1e-6)


def test_onnx_attention_with_a_mask_that_is_not_causal_is_refused_with_the_reason():
    model = onnx_attention_with_mask("anti_causal_bool")
    log = MatchLog()
    _, modified = fuse_attention(model, representative_shapes(model), log)
    assert not modified
    assert "ONNX Attention not fused: the attention mask is not causal" in log.rejections[0].reason
