"""A Softmax no attention fusion took -> ``xdna::Softmax``.

    y = Softmax(x, axis)   ->   y = xdna::Softmax(x, axis)

Runs after ``fuse_attention``, so only softmaxes outside a recognised attention remain. Opset >= 13
semantics only (one axis; older opsets flatten the tensor at ``axis``), float32 only.
"""

from __future__ import annotations

from onnx import ModelProto, helper

from xdna_ep.graph_passes import xdna_ops
from xdna_ep.graph_passes.graph import GraphView, Rewrite, apply_rewrites
from xdna_ep.graph_passes.match_log import MatchLog
from xdna_ep.graph_passes.shapes import ShapeTable

PASS_NAME = "fuse_softmax"
MIN_OPSET = 13


def fuse_softmax(model: ModelProto, shapes: ShapeTable | None = None, log: MatchLog | None = None) -> tuple[ModelProto, bool]:
    """Turn each remaining float32 Softmax into xdna::Softmax (in place)."""
    log = log if log is not None else MatchLog()
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    view = GraphView(model.graph)
    rewrites = []
    for node in list(model.graph.node):
        if node.op_type != "Softmax" or node.domain not in ("", "ai.onnx"):
            continue
        if opset < MIN_OPSET:
            log.reject(PASS_NAME, node.name, f"opset {opset} < {MIN_OPSET}: Softmax flattens at axis there")
            continue
        if shapes is not None and shapes.is_float32(node.input[0]) is False:
            log.reject(PASS_NAME, node.name, "input is not float32")
            continue
        axis = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), -1)
        name = view.fresh_name(f"{node.name or node.output[0]}/xdna_softmax")
        fused = xdna_ops.make_softmax(node.input[0], node.output[0], name, axis=int(axis))
        rewrites.append(Rewrite(fused=fused, anchor=node, matched=[node]))
        log.add_fused("softmax")
    apply_rewrites(model, view, rewrites)
    return model, bool(rewrites)
