"""fuse_matmul: linear layers with bias and erf GELU in the exporter's forms (numerics checked with
ONNX Runtime before and after, its optimizations off), weights that are not initializers, and every
encoder projection of the real models."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from real_sessions import model_folder, plain_options, run_x, whisper_config

from xdna_ep.ep.session import bind, session_options
from xdna_ep.graph_passes import xdna_ops
from xdna_ep.graph_passes.fuse_matmul import fuse_matmul
from xdna_ep.graph_passes.match_log import MatchLog
from xdna_ep.graph_passes.orchestrator import run_passes

K, N = 16, 24


def linear(gelu: str | None, bias_first: bool = True, weight_from_transpose: bool = False) -> onnx.ModelProto:
    """y = [gelu](x @ W + b) with x (2, 3, K); gelu: None, "div" (Whisper's), "mul_half_first",
    "half_of_one_plus_erf" (torch's dynamo export: h * (0.5 * (1 + erf))), "op" / "op_tanh" (ONNX's
    Gelu, opset 20, approximate "none" / "tanh")."""
    rng = np.random.default_rng(4)
    weight = rng.standard_normal((K, N)).astype(np.float32)
    inits = [numpy_helper.from_array(rng.standard_normal(N).astype(np.float32), "b")]
    nodes = []

    def node(op, inputs, **attrs):
        out = f"t{len(nodes)}"
        nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    def const(value):
        return node("Constant", [], value=numpy_helper.from_array(np.array(value, dtype=np.float32)))

    if weight_from_transpose:  # a tied embedding: W = E^T
        inits.append(numpy_helper.from_array(np.ascontiguousarray(weight.T), "E"))
        w = node("Transpose", ["E"], perm=[1, 0])
    else:
        inits.append(numpy_helper.from_array(weight, "W"))
        w = "W"
    h = node("MatMul", ["x", w])
    h = node("Add", ["b", h] if bias_first else [h, "b"])
    if gelu == "div":
        erf = node("Erf", [node("Div", [h, const(math.sqrt(2.0))])])
        h = node("Mul", [node("Mul", [h, node("Add", [erf, const(1.0)])]), const(0.5)])
    elif gelu == "mul_half_first":
        erf = node("Erf", [node("Mul", [const(1.0 / math.sqrt(2.0)), h])])
        h = node("Mul", [node("Mul", [const(0.5), h]), node("Add", [const(1.0), erf])])
    elif gelu == "half_of_one_plus_erf":
        erf = node("Erf", [node("Div", [h, const(math.sqrt(2.0))])])
        h = node("Mul", [h, node("Mul", [const(0.5), node("Add", [erf, const(1.0)])])])
    elif gelu in ("op", "op_tanh"):
        h = node("Gelu", [h], approximate="none" if gelu == "op" else "tanh")
    nodes.append(helper.make_node("Identity", [h], ["y"]))
    graph = helper.make_graph(
        nodes, "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, N])], inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20 if gelu in ("op", "op_tanh") else 18)])
    model.ir_version = 10
    return model


@pytest.mark.parametrize(
    "gelu, bias_first, activation",
    [
        (None, True, ""), (None, False, ""), ("div", True, "gelu"), ("mul_half_first", False, "gelu"),
        ("half_of_one_plus_erf", True, "gelu"), ("op", False, "gelu"),
    ],  # fmt: skip
)
def test_linear_layers_fuse_and_compute_the_same(gelu, bias_first, activation):
    model = linear(gelu, bias_first)
    x = np.random.default_rng(5).standard_normal((2, 3, K)).astype(np.float32)
    expected = run_x(model, x)
    log = MatchLog()
    fused, modified = fuse_matmul(onnx.ModelProto.FromString(model.SerializeToString()), log=log)
    assert modified
    onnx.checker.check_model(fused)
    xdna = [n for n in fused.graph.node if n.domain == xdna_ops.DOMAIN]
    assert [n.op_type for n in xdna] == [xdna_ops.MATMUL]
    attrs = xdna_ops.attributes(xdna[0])
    assert (attrs["weight_key"], attrs["bias_key"], attrs["activation"], attrs["k"], attrs["n"]) == ("W", "b", activation, K, N)
    # bias and GELU absorbed (their dead constants go at the partitioner's dead-node removal)
    assert [n.op_type for n in fused.graph.node if n.domain == "" and n.op_type != "Constant"] == ["Identity"]
    actual = run_x(bind(fused, device="cpu"), x, session_options("cpu", base=plain_options()))
    # the reference's erf (A&S 7.1.26, |error| <= 1.5e-7) differs from ONNX Runtime's in the last bits
    np.testing.assert_allclose(actual, expected, rtol=0, atol=2e-5)


def test_a_tanh_gelu_stays_an_onnx_node_with_the_reason():
    model = linear("op_tanh")
    x = np.random.default_rng(5).standard_normal((2, 3, K)).astype(np.float32)
    log = MatchLog()
    fused, _ = fuse_matmul(onnx.ModelProto.FromString(model.SerializeToString()), log=log)
    attrs = xdna_ops.attributes(next(n for n in fused.graph.node if n.domain == xdna_ops.DOMAIN))
    assert attrs["activation"] == ""  # the linear layer with its bias is fused; the Gelu is not
    assert [n.op_type for n in fused.graph.node if n.domain == ""] == ["Gelu", "Identity"]
    assert "approximate='tanh'" in log.rejections[0].reason
    actual = run_x(bind(fused, device="cpu"), x, session_options("cpu", base=plain_options()))
    # the fp32 reference MatMul (no GELU) measured equal to ONNX Runtime's on these inputs; 2e-5 as above
    np.testing.assert_allclose(actual, run_x(model, x), rtol=0, atol=2e-5)


def test_a_weight_computed_from_initializers_is_rejected_with_the_reason():
    model = linear(None, weight_from_transpose=True)
    log = MatchLog()
    _, modified = fuse_matmul(model, log=log)
    assert not modified
    assert "computed from initializers" in log.rejections[0].reason


def test_activation_times_activation_is_not_a_linear_layer():
    model = linear(None)
    model.graph.node[0].input[1] = "x"  # x @ x is not a layer: B is computed at run time
    log = MatchLog()
    _, modified = fuse_matmul(model, log=log)
    assert not modified
    assert "computed at run time" in log.rejections[0].reason


@pytest.mark.parametrize("name", ["tiny.en", "base"])
def test_every_encoder_projection_is_fused(name):
    folder = model_folder(name)
    n_layer = whisper_config(folder)["n_audio_layer"]
    model = onnx.load(str(folder / "encoder_model.onnx"))
    # the projections are the MatMuls whose B is a weight (an initializer), whatever the exporter named them
    weights = {initializer.name for initializer in model.graph.initializer}
    expected = {node.name for node in model.graph.node if node.op_type == "MatMul" and node.input[1] in weights}
    assert len(expected) == 6 * n_layer
    fused, report = run_passes(model, partition_nodes=False)
    fused_from = {
        node.name.rsplit("/xdna_matmul", 1)[0]
        for node in fused.graph.node
        if node.domain == xdna_ops.DOMAIN and node.op_type == xdna_ops.MATMUL
    }
    assert fused_from == expected
    assert report.counts["fuse_matmul"] == 6 * n_layer
    assert report.kinds["matmul+bias+gelu"] == n_layer  # fc1
    assert not [r for r in report.rejections if r.pass_name == "fuse_matmul"]
