"""Linear layers -> ``xdna::MatMul``.

    y = MatMul(x, W) [+ b] [-> GELU]   ->   y = xdna::MatMul(x)   (W, b by key)

W is a 2-D float32 initializer (through Identity nodes), b a 1-D float32 initializer of W's width,
in either operand order of the Add. GELU is the exact (erf) form Whisper's exporter writes,
``0.5 * h * (1 + erf(h / sqrt(2)))``, tolerating ``h * (1/sqrt(2))`` for the division and any order of
the two products (``h * (0.5 * (1 + erf))`` is torch's dynamo export), or ONNX's ``Gelu`` op (opset 20)
with ``approximate="none"``; its tanh approximation is not what xdna::MatMul computes and stays an ONNX
node, with the reason in the match log. The weight and bias stay initializers of the model until ``xdna_ep.compile`` makes
them resident on the device under their names and removes them from the graph.
"""

from __future__ import annotations

import math

from onnx import ModelProto, NodeProto, TensorProto, helper

from xdna_ep.graph_passes import xdna_ops
from xdna_ep.graph_passes.graph import GraphView, Rewrite, apply_rewrites
from xdna_ep.graph_passes.match_log import MatchLog
from xdna_ep.graph_passes.shapes import ShapeTable

PASS_NAME = "fuse_matmul"
SQRT2 = math.sqrt(2.0)
_CONSTANT_RTOL = 1e-6


class NoMatch(Exception):
    """The MatMul is not a linear layer xdna::MatMul can take; the message says why."""


def fuse_matmul(model: ModelProto, shapes: ShapeTable | None = None, log: MatchLog | None = None) -> tuple[ModelProto, bool]:
    """Fuse MatMul by a constant weight (+ bias) (+ erf GELU) into xdna::MatMul (in place)."""
    log = log if log is not None else MatchLog()
    view = GraphView(model.graph)
    rewrites = []
    for node in list(model.graph.node):
        if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx"):
            continue
        try:
            rewrite, kind = match_linear(view, node, shapes)
        except NoMatch as reason:
            log.reject(PASS_NAME, node.name, str(reason))
            continue
        rewrites.append(rewrite)
        log.add_fused(kind)
        gelu = _single_consumer(view, rewrite.matched[-1].output[0], "Gelu")
        if gelu is not None and not kind.endswith("+gelu"):
            log.reject(PASS_NAME, gelu.name, f"Gelu approximate={_gelu_approximation(gelu)!r} is not the erf GELU xdna::MatMul computes")
    apply_rewrites(model, view, rewrites)
    return model, bool(rewrites)


def match_linear(view: GraphView, matmul: NodeProto, shapes: ShapeTable | None) -> tuple[Rewrite, str]:
    """Match act(x @ W + b) starting at ``matmul``; raise NoMatch with the reason."""
    x, w_name = matmul.input[0], matmul.input[1]
    weight = view.initializer(w_name)
    if weight is None:
        if view.constant(w_name) is not None:
            raise NoMatch("B is a Constant node, not an initializer")
        if _computed_from_initializers(view, w_name):
            raise NoMatch("B is computed from initializers (a transposed tied embedding), not an initializer")
        raise NoMatch("B is computed at run time (activation x activation), not a weight")
    if len(weight.dims) != 2:
        raise NoMatch(f"weight has shape {list(weight.dims)}, not (k, n)")
    if weight.data_type != TensorProto.FLOAT:
        raise NoMatch(f"weight is {TensorProto.DataType.Name(weight.data_type)}, not FLOAT (only float32 crosses)")
    k, n = weight.dims
    x_shape = shapes.shape(x) if shapes else None
    if x_shape is not None and (len(x_shape) < 2 or x_shape[-1] != k):
        raise NoMatch(f"input shape {list(x_shape)} does not end in the weight's {k} rows")
    matched = [matmul]
    out = matmul.output[0]
    bias_key = ""
    add = _single_consumer(view, out, "Add")
    if add is not None:
        other = add.input[1] if add.input[0] == out else add.input[0]
        bias = view.initializer(other)
        if bias is not None and bias.data_type == TensorProto.FLOAT and list(bias.dims) == [n]:
            bias_key = bias.name
            matched.append(add)
            out = add.output[0]
    gelu_nodes = _match_gelu(view, out)
    activation = ""
    if gelu_nodes:
        activation = "gelu"
        matched.extend(gelu_nodes)
        out = gelu_nodes[-1].output[0]
    name = view.fresh_name(f"{matmul.name or out}/xdna_matmul")
    fused = xdna_ops.make_matmul(
        x, out, name, weight_key=weight.name, bias_key=bias_key, activation=activation, k=k, n=n
    )
    kind = "matmul" + ("+bias" if bias_key else "") + ("+gelu" if activation else "")
    return Rewrite(fused=fused, anchor=matched[-1], matched=matched), kind


def _gelu_approximation(node: NodeProto) -> str:
    value = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "approximate"), b"none")
    return value.decode() if isinstance(value, bytes) else str(value)


def _match_gelu(view: GraphView, h: str) -> list[NodeProto]:
    """Nodes of 0.5 * h * (1 + erf(h / sqrt(2))) in data-flow order (last produces the result), or []."""
    if view.is_graph_output(h):
        return []
    gelu = _single_consumer(view, h, "Gelu")
    if gelu is not None:
        return [gelu] if _gelu_approximation(gelu) == "none" else []
    consumers = view.consumers(h)
    if len(consumers) != 2:
        return []
    to_erf = next((node for node in consumers if _is_scale_by(view, node, h, 1.0 / SQRT2)), None)
    if to_erf is None:
        return []
    erf = _single_consumer(view, to_erf.output[0], "Erf")
    if erf is None:
        return []
    one_plus = _single_consumer(view, erf.output[0], "Add")
    if one_plus is None or not _other_is(view, one_plus, erf.output[0], 1.0):
        return []
    first = next((node for node in consumers if node is not to_erf), None)
    if len(view.consumers(one_plus.output[0])) != 1:
        return []
    # h * (0.5 * (1 + erf)): the half multiplies 1 + erf first, the last product takes h
    half_first = _single_consumer(view, one_plus.output[0], "Mul")
    if (
        half_first is not None and first is not None and first.op_type == "Mul" and first.domain in ("", "ai.onnx")
        and _other_is(view, half_first, one_plus.output[0], 0.5)
        and sorted(first.input) == sorted([h, half_first.output[0]])
        and len(view.consumers(half_first.output[0])) == 1 and not view.is_graph_output(half_first.output[0])
    ):
        return [to_erf, erf, one_plus, half_first, first]
    # the two products: h * (1 + erf) * 0.5 in any order; `first` consumes h, `last` finishes it
    if first is None or first.op_type != "Mul":
        return []
    last = _single_consumer(view, first.output[0], "Mul")
    if last is None:
        return []
    leaves = [name for name in first.input if name != h] + [name for name in last.input if name != first.output[0]]
    half = [name for name in leaves if _close(view.scalar(name), 0.5)]
    ones = [name for name in leaves if name == one_plus.output[0]]
    if len(leaves) != 2 or len(half) != 1 or len(ones) != 1:
        return []
    if len(view.consumers(one_plus.output[0])) != 1:
        return []
    return [to_erf, erf, one_plus, first, last]


def _computed_from_initializers(view: GraphView, name: str, depth: int = 4) -> bool:
    """True when ``name`` is computed only from initializers and constants (e.g. Transpose(W))."""
    node = view.producer(name)
    if node is None:
        return view.initializer(name) is not None
    if view.constant(name) is not None:
        return True
    return depth > 0 and all(_computed_from_initializers(view, i, depth - 1) for i in node.input if i)


def _single_consumer(view: GraphView, name: str, op_type: str) -> NodeProto | None:
    """The only consumer of ``name`` if it is an ``op_type`` node and ``name`` is not a graph output."""
    consumers = view.consumers(name)
    if view.is_graph_output(name) or len(consumers) != 1:
        return None
    node = consumers[0]
    return node if node.op_type == op_type and node.domain in ("", "ai.onnx") else None


def _is_scale_by(view: GraphView, node: NodeProto, x: str, factor: float) -> bool:
    """node computes x * factor (as Mul by factor or Div by 1/factor)."""
    if node.op_type == "Div" and list(node.input[:1]) == [x]:
        return _close(view.scalar(node.input[1]), 1.0 / factor)
    if node.op_type == "Mul" and x in node.input:
        return _other_is(view, node, x, factor)
    return False


def _other_is(view: GraphView, node: NodeProto, x: str, value: float) -> bool:
    if len(node.input) != 2 or x not in node.input:
        return False
    other = node.input[1] if node.input[0] == x else node.input[0]
    return _close(view.scalar(other), value)


def _close(value: float | None, target: float) -> bool:
    return value is not None and abs(value - target) <= _CONSTANT_RTOL * abs(target)
