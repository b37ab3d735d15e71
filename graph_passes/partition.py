"""Partition: each fused node goes to the NPU or back to ONNX Runtime's CPU kernels.

    xdna::Op (cost model: NPU time >= CPU time, or forced to the CPU)  ->  the original ONNX nodes

Per fused node and per shape (representative shapes, see ``shapes.py``), ``ep/cost_model.py``
estimates the NPU time (host + launch + transfer + compute) and the CPU time; the cheaper wins and the
reason is kept. A node that stays on the CPU is written back as exactly the ONNX nodes it replaced, so
ONNX Runtime's own kernels run it. ``PlacementOptions`` overrides the choice for tests and users:
everything to the NPU, everything to the CPU, or per op kind.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from onnx import ModelProto, NodeProto

from xdna_ep.graph_passes import xdna_ops
from xdna_ep.graph_passes.graph import (
    drop_original_records,
    ensure_xdna_opset,
    originals,
    remove_dead_nodes,
    replace_nodes,
    topological_sort,
)
from xdna_ep.graph_passes.shapes import ShapeTable

PLACEMENTS = ("auto", "npu", "cpu")
OP_KINDS = {"matmul": xdna_ops.MATMUL, "attention": xdna_ops.ATTENTION, "softmax": xdna_ops.SOFTMAX}


@dataclass(frozen=True)
class PlacementOptions:
    """Where fused nodes go, per op kind: "auto" (cost model), "npu" or "cpu" (forced)."""

    matmul: str = "auto"
    attention: str = "auto"
    softmax: str = "auto"

    def __post_init__(self) -> None:
        for kind in OP_KINDS:
            value = getattr(self, kind)
            if value not in PLACEMENTS:
                raise ValueError(f"placement {kind}={value!r} is not one of {', '.join(PLACEMENTS)}")

    @classmethod
    def parse(cls, spec: str | PlacementOptions | None) -> PlacementOptions:
        """"auto", "npu", "cpu", or comma-separated overrides: "npu,softmax=cpu", "matmul=cpu"."""
        if isinstance(spec, PlacementOptions):
            return spec
        if spec is None or spec == "":
            return cls()
        values: dict[str, str] = {}
        for part in str(spec).split(","):
            part = part.strip()
            if "=" in part:
                kind, _, value = (item.strip() for item in part.partition("="))
                if kind not in OP_KINDS:
                    raise ValueError(f"placement names unknown op kind {kind!r}: valid are {', '.join(OP_KINDS)}")
                values[kind] = value
            else:
                values.update({kind: part for kind in OP_KINDS if kind not in values})
        return cls(**values)

    def for_op(self, op_type: str) -> str:
        kind = next(kind for kind, op in OP_KINDS.items() if op == op_type)
        return getattr(self, kind)


@dataclass(frozen=True)
class NodePlacement:
    """The decision for one fused node, with the shape and the estimates it was made on."""

    node: str
    kind: str  # "matmul+bias+gelu", "attention.cross", "softmax", ...
    shape: str  # e.g. "m=1500 k=384 n=1536"
    flops: int
    placement: str  # "npu" or "cpu"
    reason: str
    npu_s: float | None
    cpu_s: float | None
    design: str = ""  # the NPU design the estimate names (GEMMs per K; kernels/designs.py plans the set)


def partition(
    model: ModelProto,
    shapes: ShapeTable,
    *,
    profile: str = "npu1",
    placement: PlacementOptions | str | None = None,
    precision: str = "bf16",
    decisions: list[NodePlacement] | None = None,
    original_order: dict[str, int] | None = None,
) -> tuple[ModelProto, bool]:
    """Place every xdna node on the NPU or write it back as its original nodes (in place).

    ``original_order`` (first output name -> position in the model before the fusions) puts the
    nodes back in their original order, so that a graph with everything on the CPU is the original.
    """
    options = PlacementOptions.parse(placement)
    decisions = decisions if decisions is not None else []
    new_nodes: list[NodeProto] = []
    written_back = 0
    for node in model.graph.node:
        if not xdna_ops.is_xdna(node):
            new_nodes.append(node)
            continue
        original_nodes = originals(model, node.name)
        decision = place_node(node, original_nodes, shapes, profile, options.for_op(node.op_type), precision)
        decisions.append(decision)
        if decision.placement == "npu":
            new_nodes.append(node)
        else:
            new_nodes.extend(original_nodes)
            written_back += 1
    if original_order:
        new_nodes = _in_original_order(new_nodes, original_order)
    replace_nodes(model.graph, new_nodes)
    drop_original_records(model)
    topological_sort(model.graph)
    removed = remove_dead_nodes(model)
    ensure_xdna_opset(model)
    return model, bool(written_back or removed)


def _in_original_order(nodes: list[NodeProto], original_order: dict[str, int]) -> list[NodeProto]:
    """Stable sort by original position; a new node (helper) takes the position of the node after it."""
    keys: list[float] = [0.0] * len(nodes)
    following = float(len(original_order))
    for index in range(len(nodes) - 1, -1, -1):
        position = original_order.get(nodes[index].output[0]) if nodes[index].output else None
        if position is None:
            keys[index] = following - 0.5
        else:
            keys[index] = following = float(position)
    order = sorted(range(len(nodes)), key=lambda index: (keys[index], index))
    return [nodes[index] for index in order]


def place_node(
    node: NodeProto,
    original_nodes: list[NodeProto],
    shapes: ShapeTable,
    profile: str,
    choice: str,
    precision: str,
) -> NodePlacement:
    """Estimate one fused node and decide where it runs (``choice`` is auto / npu / cpu)."""
    from xdna_ep.ep import cost_model

    attrs = xdna_ops.attributes(node)
    estimate, shape_text, kind = None, "shape unknown", node.op_type.lower()
    if node.op_type == xdna_ops.MATMUL:
        kind = "matmul" + ("+bias" if attrs["bias_key"] else "") + ("+gelu" if attrs["activation"] else "")
        x_shape = shapes.shape(node.input[0])
        if x_shape is not None:
            m = math.prod(map(int, x_shape[:-1]))
            k, n = int(attrs["k"]), int(attrs["n"])
            shape_text = f"m={m} k={k} n={n}"
            estimate = cost_model.estimate_matmul(
                profile, m, k, n, precision=precision, bias=bool(attrs["bias_key"]), gelu=bool(attrs["activation"])
            )
    elif node.op_type == xdna_ops.ATTENTION:
        kind = f"attention.{attrs['kind']}"
        dims = _attention_dims(node, original_nodes, shapes)
        if dims is not None:
            batch, n_head, n_q, n_kv, head_dim = dims
            shape_text = f"b={batch} h={n_head} q={n_q} kv={n_kv} d={head_dim}"
            estimate = cost_model.estimate_attention(
                profile, batch, n_head, n_q, n_kv, head_dim, precision=precision
            )
    elif node.op_type == xdna_ops.SOFTMAX:
        x_shape = shapes.shape(node.input[0])
        if x_shape:
            axis = int(attrs["axis"]) % len(x_shape)
            rows, cols = math.prod(map(int, x_shape)) // x_shape[axis], x_shape[axis]
            shape_text = f"rows={rows} cols={cols}"
            estimate = cost_model.estimate_softmax(profile, rows, cols, precision=precision)
    flops = estimate.flops if estimate else 0
    npu_s = estimate.npu_s if estimate else None
    cpu_s = estimate.cpu_s if estimate else None
    assumed = f" [{shapes.assumptions}]" if shapes.assumptions else ""
    if choice != "auto":
        cost = f" (cost model: {estimate.reason})" if estimate else ""
        reason = f"forced to {choice.upper()} by the placement override{cost}"
        placement = choice
    elif estimate is None:
        reason, placement = f"shape unknown at representative sizes{assumed}: kept on the CPU", "cpu"
    else:
        reason, placement = f"{estimate.reason} at {shape_text}{assumed}", estimate.placement
    design = estimate.design if estimate else ""
    return NodePlacement(node.name, kind, shape_text, flops, placement, reason, npu_s, cpu_s, design)


def _attention_dims(
    node: NodeProto, original_nodes: list[NodeProto], shapes: ShapeTable
) -> tuple[int, int, int, int, int] | None:
    """(batch, n_head, n_q, n_kv, head_dim) from the original Softmax input (or Q and K) and the V input."""
    softmax = next((n for n in original_nodes if n.op_type == "Softmax"), None)
    scores = shapes.shape(softmax.input[0]) if softmax is not None else None
    q_shape, k_shape = shapes.shape(node.input[0]), shapes.shape(node.input[1])
    if softmax is None and q_shape is not None and k_shape is not None and len(q_shape) == len(k_shape) == 4:
        scores = (*q_shape[:3], k_shape[2])  # (b, h, n_q, n_kv): an ONNX Attention node was fused
    v_shape = shapes.shape(node.input[2])
    if scores is None or v_shape is None or len(scores) != 4 or len(v_shape) != 4:
        return None
    batch, n_head, n_q, n_kv = scores
    return batch, n_head, n_q, n_kv, v_shape[3]

