"""fuse_softmax: a lone Softmax becomes xdna::Softmax (same numbers); old opsets are left alone."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from real_sessions import plain_options

from xdna_ep.ep.session import bind, session_options
from xdna_ep.graph_passes import xdna_ops
from xdna_ep.graph_passes.fuse_softmax import fuse_softmax
from xdna_ep.graph_passes.match_log import MatchLog


def softmax_model(axis: int | None, opset: int = 18) -> onnx.ModelProto:
    """x (2, 3, 5) -> Softmax(axis) -> y; ``axis=None`` leaves the attribute out (the opset's default)."""
    attrs = {} if axis is None else {"axis": axis}
    graph = helper.make_graph(
        [helper.make_node("Softmax", ["x"], ["s"], **attrs), helper.make_node("Identity", ["s"], ["y"])],
        "softmax",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 5])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("axis", [-1, 1, 0])
def test_lone_softmax_fuses_and_computes_the_same(axis):
    model = softmax_model(axis)
    x = (np.random.default_rng(6).standard_normal((2, 3, 5)) * 4).astype(np.float32)
    plain = ort.InferenceSession(model.SerializeToString(), plain_options(), providers=["CPUExecutionProvider"])
    expected = plain.run(None, {"x": x})[0]
    fused, modified = fuse_softmax(onnx.ModelProto.FromString(model.SerializeToString()))
    assert modified
    assert [(n.domain, n.op_type) for n in fused.graph.node] == [(xdna_ops.DOMAIN, xdna_ops.SOFTMAX), ("", "Identity")]
    assert xdna_ops.attributes(fused.graph.node[0])["axis"] == axis
    options = session_options("cpu", base=plain_options())
    session = ort.InferenceSession(bind(fused, device="cpu").SerializeToString(), options, providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"x": x})[0], expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("axis", [None, 1, 0])
def test_softmax_of_an_opset_before_13_that_flattens_is_left_alone_with_the_reason(axis):
    # opset 11: Softmax flattens (2, 3, 5) to 2-D at axis (default 1): not a one-axis softmax
    log = MatchLog()
    _, modified = fuse_softmax(softmax_model(axis, opset=11), log=log)
    assert not modified
    assert "opset 11" in log.rejections[0].reason and "flattens" in log.rejections[0].reason


@pytest.mark.parametrize("axis", [-1, 2])
def test_softmax_of_an_opset_before_13_on_the_last_axis_fuses_and_computes_the_same(axis):
    model = softmax_model(axis, opset=11)
    x = (np.random.default_rng(7).standard_normal((2, 3, 5)) * 4).astype(np.float32)
    plain = ort.InferenceSession(model.SerializeToString(), plain_options(), providers=["CPUExecutionProvider"])
    fused, modified = fuse_softmax(onnx.ModelProto.FromString(model.SerializeToString()))
    assert modified
    assert xdna_ops.attributes(fused.graph.node[0])["axis"] == -1
    options = session_options("cpu", base=plain_options())
    session = ort.InferenceSession(bind(fused, device="cpu").SerializeToString(), options, providers=["CPUExecutionProvider"])
    # fp32 row softmax vs ORT's: measured max difference 6e-8 on these inputs
    np.testing.assert_allclose(session.run(None, {"x": x})[0], plain.run(None, {"x": x})[0], rtol=0, atol=1e-6)
