"""A Softmax no attention fusion took -> ``xdna::Softmax``.

    y = Softmax(x, axis)   ->   y = xdna::Softmax(x, axis)

Runs after ``fuse_attention``, so only softmaxes outside a recognised attention remain. float32 only.
From opset 13 Softmax normalises one axis; before, it flattens the tensor at ``axis`` (default 1), which
equals a one-axis softmax only when ``axis`` is the last axis: only those old-opset nodes are fused.
"""

from __future__ import annotations

from onnx import ModelProto, helper

from xdna_ep.graph_passes import xdna_ops
from xdna_ep.graph_passes.fuse_attention import SOFTMAX_AXIS_OPSET, default_opset, softmax_is_last_axis
from xdna_ep.graph_passes.graph import GraphView, Rewrite, apply_rewrites
from xdna_ep.graph_passes.match_log import MatchLog
from xdna_ep.graph_passes.shapes import ShapeTable, representative_shapes

PASS_NAME = "fuse_softmax"


def fuse_softmax(model: ModelProto, shapes: ShapeTable | None = None, log: MatchLog | None = None) -> tuple[ModelProto, bool]:
    """Turn each remaining float32 Softmax into xdna::Softmax (in place)."""
    log = log if log is not None else MatchLog()
    shapes = shapes if shapes is not None else representative_shapes(model)
    opset = default_opset(model)
    view = GraphView(model.graph)
    rewrites = []
    for node in list(model.graph.node):
        if node.op_type != "Softmax" or node.domain not in ("", "ai.onnx"):
            continue
        if shapes.is_float32(node.input[0]) is not True:
            log.reject(PASS_NAME, node.name, "input is not float32 (or its type is unknown)")
            continue
        axis = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), -1)
        if opset < SOFTMAX_AXIS_OPSET:
            problem = softmax_is_last_axis(node, len(shapes.shape(node.input[0]) or ()), opset)
            if problem:
                log.reject(PASS_NAME, node.name, problem)
                continue
            axis = -1
        name = view.fresh_name(f"{node.name or node.output[0]}/xdna_softmax")
        fused = xdna_ops.make_softmax(node.input[0], node.output[0], name, axis=int(axis))
        rewrites.append(Rewrite(fused=fused, anchor=node, matched=[node]))
        log.add_fused("softmax")
    apply_rewrites(model, view, rewrites)
    return model, bool(rewrites)
