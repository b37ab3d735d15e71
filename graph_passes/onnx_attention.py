"""Unmasked multi-head attention chains -> ONNX's ``Attention`` op (opset 23), for the CPU session.

    Q = Transpose(Reshape(q, (0, -1, h, d)), (0, 2, 1, 3))          K from k and V from v alike
    O = Softmax(Q @ Transpose(K, (0, 1, 3, 2)), axis=-1) @ V
    out = Reshape(Transpose(O, (0, 2, 1, 3)), (0, -1, h * d))
  ->
    out = Attention(q, k, v; q_num_heads=h, kv_num_heads=h, scale=1.0)

q, k and v are (batch, n, h * d), q scaled already: ``models/build.py`` writes the encoder's
self-attention so. ONNX Runtime's CPU kernel for ``Attention`` runs the same two products and the same
softmax (its output equals the chain's bit for bit on the real encoders: the sibling test), without
the five head-layout copies and the separate softmax pass over the (b, h, n, n) scores.

Where the query length n is static (the encoder's 1500 positions, from ONNX shape inference) and over
``QUERY_BLOCK_ROWS``, the queries are cut into blocks of that many rows, one Attention node each
(Slice, Attention, Concat): the same rows computed the same way, so the output is unchanged, while one
head's block of scores (250 x 1500 fp32, 1.5 MB) stays near a core's L2 instead of spilling 9 MB
through L3. Measured on base's encoder (fp32 sessions of the rewritten encoder with each block count,
timed in turn in one process by a script not kept): 3, 4, 6, 10, 15 and 25 blocks took 0.98, 0.97,
0.96, 0.97, 0.97 and 0.99x the time of one block; end to end, ``examples/compare_folders.py`` measures
the rewrite as a whole (README "The exported model"). A dynamic n keeps one node: ONNX
Runtime's Attention refuses an empty block.

This is not an NPU fusion (``fuse_attention`` makes ``xdna::Attention`` for that); it changes what the
plain ONNX Runtime CPU session of ``device="cpu"`` runs, in memory: the model files keep the chain
the passes, the variants and the int8 quantizer read. Only the exact form above is taken: constant
shapes and permutations as written, a last-axis Softmax, every intermediate read by the chain alone
and none a graph output. The decoders' self-attention adds a causal mask and their K and V heads are
``present.*`` outputs, so in this project's graphs only the encoder's self-attention is rewritten;
any other chain, and one over other types than float32, is left as it is. When a node is written,
the model's default-domain opset is raised to 23, and only if every op of the default domain it holds
means the same at 23 as at the model's opset (``SAME_UP_TO_23``); otherwise the model is left
unchanged.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import ModelProto, NodeProto, TensorProto, helper

from xdna_ep.graph_passes.graph import GraphView, add_constant, remove_dead_nodes, remove_unused_initializers, splice_nodes

PASS_NAME = "onnx_attention"
ATTENTION_OPSET = 23  # the first opset with ONNX's Attention op
ATTENTION_IR_VERSION = 11  # the IR version of opset 23
# default-domain ops whose meaning for the float and int8 tensors of Whisper graphs is the same from
# opset 13 to 23 (later versions only add types: bfloat16, float8, int4, float4)
SAME_UP_TO_23 = frozenset({
    "Add", "Cast", "Concat", "Constant", "Conv", "Div", "DynamicQuantizeLinear", "Equal", "Erf", "Gather",
    "Identity", "LayerNormalization", "LessOrEqual", "MatMul", "MatMulInteger", "Mul", "Range", "Reshape",
    "Shape", "Size", "Slice", "Softmax", "Split", "Sqrt", "Squeeze", "Sub", "Transpose", "Unsqueeze", "Where",
})  # fmt: skip
FIRST_OPSET = 13  # Softmax normalises one axis from 13 on; older graphs are left as they are
QUERY_BLOCK_ROWS = 250  # queries per Attention node when n is static and longer (module docstring)


class _NoMatch(Exception):
    """Not the chain this pass rewrites."""


def onnx_attention(model: ModelProto) -> tuple[ModelProto, bool]:
    """Rewrite every unmasked head-split attention chain into ONNX Attention (in place)."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    default_ops = {node.op_type for node in model.graph.node if node.domain in ("", "ai.onnx")}
    if not FIRST_OPSET <= opset <= ATTENTION_OPSET or not default_ops <= SAME_UP_TO_23 | {"Attention"}:
        return model, False
    view = GraphView(model.graph)
    rewrites = []
    for node in model.graph.node:
        if node.op_type == "Softmax" and node.domain in ("", "ai.onnx"):
            try:
                rewrites.append(_match(view, node))
            except _NoMatch:
                continue
    if not rewrites:
        return model, False
    types, lengths = _inferred(model)
    # ONNX Runtime's CPU Attention kernel computes float32 here (an fp16 model keeps its chain)
    rewrites = [(fused, chain) for fused, chain in rewrites if all(types.get(name) == TensorProto.FLOAT for name in fused.input)]
    if not rewrites:
        return model, False
    removed = {id(node) for _, chain in rewrites for node in chain}
    # the fused nodes take the merge Reshape's place
    replacement = {id(chain[-1]): _query_blocks(view, fused, lengths.get(fused.input[0])) for fused, chain in rewrites}
    splice_nodes(model.graph, replacement, removed)
    remove_dead_nodes(model)  # the chain's shape constants
    remove_unused_initializers(model)
    for opset_id in model.opset_import:
        if opset_id.domain in ("", "ai.onnx"):
            opset_id.version = ATTENTION_OPSET
    model.ir_version = max(model.ir_version, ATTENTION_IR_VERSION)
    return model, True


def _match(view: GraphView, softmax: NodeProto) -> tuple[NodeProto, list[NodeProto]]:
    """(the Attention node, the chain it replaces, merge Reshape last) around ``softmax``, or _NoMatch."""
    axis = next((attr.i for attr in softmax.attribute if attr.name == "axis"), -1)
    if axis not in (-1, 3):
        raise _NoMatch
    scores = _only(view, view.producer_of(softmax.input[0], "MatMul"), softmax.input[0])
    probs_matmul = _single_consumer(view, softmax.output[0], "MatMul", 0)
    k_t = _only(view, view.producer_of(scores.input[1], "Transpose"), scores.input[1])
    _check_perm(k_t, [0, 1, 3, 2])
    q, q_chain, heads, head_dim = _heads(view, scores.input[0])
    k, k_chain, *k_dims = _heads(view, k_t.input[0])
    v, v_chain, *v_dims = _heads(view, probs_matmul.input[1])
    if k_dims != [heads, head_dim] or v_dims != [heads, head_dim]:
        raise _NoMatch
    merge_t = _single_consumer(view, probs_matmul.output[0], "Transpose", 0)
    _check_perm(merge_t, [0, 2, 1, 3])
    merge = _single_consumer(view, merge_t.output[0], "Reshape", 0)
    if _constant_list(view, merge.input[1]) != [0, -1, heads * head_dim] or _allows_zero(merge):
        raise _NoMatch
    fused = helper.make_node(
        "Attention", [q, k, v], [merge.output[0]], name=f"{softmax.name or softmax.output[0]}/onnx_attention",
        q_num_heads=heads, kv_num_heads=heads, scale=1.0,
    )  # fmt: skip
    chain = [*q_chain, *k_chain, k_t, *v_chain, scores, softmax, probs_matmul, merge_t, merge]
    return fused, chain


def _inferred(model: ModelProto) -> tuple[dict[str, int], dict[str, int]]:
    """(tensor name -> element type, tensor name -> static axis-1 length of a rank-3 tensor) from ONNX
    shape inference: the queries' type and their positions n in (batch, n, h * d)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except (onnx.shape_inference.InferenceError, ValueError):
        return {}, {}
    types, lengths = {}, {}
    for value in (*inferred.graph.value_info, *inferred.graph.input):
        tensor = value.type.tensor_type
        types[value.name] = tensor.elem_type
        if len(tensor.shape.dim) == 3 and tensor.shape.dim[1].HasField("dim_value"):
            lengths[value.name] = tensor.shape.dim[1].dim_value
    return types, lengths


def _query_blocks(view: GraphView, fused: NodeProto, length: int | None) -> list[NodeProto]:
    """``fused`` itself, or for a static query length over QUERY_BLOCK_ROWS: one Slice + Attention per
    block of rows and a Concat of the blocks into ``fused``'s output."""
    if length is None or length <= QUERY_BLOCK_ROWS:
        return [fused]
    q, k, v = fused.input
    nodes, outputs = [], []
    axis = add_constant(view, nodes, np.array([1], np.int64), f"{fused.name}/rows_axis")
    for start in range(0, length, QUERY_BLOCK_ROWS):
        bounds = [
            add_constant(view, nodes, np.array([value], np.int64), f"{fused.name}/rows_{value}")
            for value in (start, min(start + QUERY_BLOCK_ROWS, length))
        ]
        rows = view.fresh_name(f"{fused.name}/q_rows_{start}")
        nodes.append(helper.make_node("Slice", [q, *bounds, axis], [rows]))
        outputs.append(view.fresh_name(f"{fused.name}/out_rows_{start}"))
        block = helper.make_node("Attention", [rows, k, v], [outputs[-1]], name=view.fresh_name(f"{fused.name}/rows_{start}"))
        block.attribute.extend(fused.attribute)
        nodes.append(block)
    nodes.append(helper.make_node("Concat", outputs, list(fused.output), name=fused.name, axis=1))
    return nodes


def _heads(view: GraphView, name: str) -> tuple[str, list[NodeProto], int, int]:
    """(x, [Reshape, Transpose], h, d) for ``name`` = Transpose(Reshape(x, (0, -1, h, d)), (0, 2, 1, 3))."""
    transpose = _only(view, view.producer_of(name, "Transpose"), name)
    _check_perm(transpose, [0, 2, 1, 3])
    reshape = _only(view, view.producer_of(transpose.input[0], "Reshape"), transpose.input[0])
    shape = _constant_list(view, reshape.input[1])
    if shape is None or len(shape) != 4 or shape[:2] != [0, -1] or min(shape[2:]) < 1 or _allows_zero(reshape):
        raise _NoMatch
    return reshape.input[0], [reshape, transpose], shape[2], shape[3]


def _only(view: GraphView, node: NodeProto | None, output: str) -> NodeProto:
    """``node`` (the producer of ``output``) if the chain alone reads ``output`` and it is no graph output."""
    if node is None or view.is_graph_output(output) or len(view.consumers(output)) != 1:
        raise _NoMatch
    return node


def _single_consumer(view: GraphView, name: str, op_type: str, index: int) -> NodeProto:
    consumers = view.consumers(name)
    if view.is_graph_output(name) or len(consumers) != 1:
        raise _NoMatch
    node = consumers[0]
    if node.op_type != op_type or node.domain not in ("", "ai.onnx") or node.input[index] != name:
        raise _NoMatch
    return node


def _check_perm(node: NodeProto, perm: list[int]) -> None:
    if next((list(attr.ints) for attr in node.attribute if attr.name == "perm"), None) != perm:
        raise _NoMatch


def _constant_list(view: GraphView, name: str) -> list[int] | None:
    value = view.constant(name)
    return None if value is None else [int(x) for x in value.reshape(-1)]


def _allows_zero(reshape: NodeProto) -> bool:
    return any(attr.name == "allowzero" and attr.i for attr in reshape.attribute)
