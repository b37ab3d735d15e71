"""Scaled dot-product attention -> ``xdna::Attention``.

    P = Softmax(Q @ K^T * scale [+ causal mask]);  O = P @ V   ->   O = xdna::Attention(Q, K, V)

with Q (b, h, n_q, d), K and V (b, h, n_kv, d). One pattern covers Whisper's three kinds:

- encoder self-attention (no mask; Q, K, V projected from the same states) -> kind "self";
- decoder self-attention with a causal mask; with past, K and V are ``Concat(past, new)``, which stays
  in the graph because ``present.*`` is a graph output -> kind "causal_self";
- cross-attention: K, V projected from the encoder states (first step) or read from
  ``past_key_values.*.encoder.*`` (``decoder_with_past``) -> kind "cross".

Exporter variations tolerated: the scale folded into Q before or after its Reshape/Transpose, into K,
or applied to the scores; Mul or Div by the scale (and PyTorch SDPA's split ``* 1.0`` on both
operands); K^T from K (b, h, n, d) by perm (0, 1, 3, 2), from the (b, n, h, d) reshape by
(0, 2, 3, 1), or (torch's dynamo export of SDPA) through three dimensions, Reshape to (b * h, n, d),
Transpose (0, 2, 1), Reshape to (b, h, d, n), taken only where the shapes show exactly that; the mask
added before or after the scale; the ``Where(IsNaN(P), 0, P)`` guard after
the softmax. A mask is accepted only if its value depends on no input's values (only on shapes, read
through Shape / Size) and evaluating it on probe inputs of two sizes gives exactly the causal pattern
over the scores it is added to (visible iff key j <= n_kv - n_q + i); anything else is rejected with
the reason.

ONNX's own ``Attention`` op (opset 23) is the second pattern:

    O = Attention(Q, K, V; is_causal, scale)   ->   O = xdna::Attention(Q, K, V)

with 4-D (b, h, n, d) operands as they are, 3-D (b, n, h * d) ones through Reshape + Transpose to heads
and back. Only what xdna::Attention computes is taken: no past or softcap input or attribute, no extra
output, equal heads and head sizes for Q, K and V, a causal flag only where ONNX's top-left causal
alignment equals xdna's end-aligned one (n_q == n_kv), and an ``attn_mask`` (boolean, True = attend,
or additive; 4-D operands, no causal flag) only where it passes the same probe as the additive masks
above (torch's dynamo export at opset 23 writes the decoder's causal mask that way); the rest is
refused with the reason. Its kind comes from where Q and K are projected from, as for the softmax
pattern. A
fused node placed on the CPU is written back as an ONNX Attention node on the same 4-D operands.

ONNX Runtime's contrib ``Attention`` (packed QKV weight and bias, what ``onnxruntime.transformers.optimizer
--model_type bart`` writes for Whisper's encoder) is the third:

    O = com.microsoft.Attention(X, W_qkv, b_qkv)   ->   Q, K, V = Split(X @ W_qkv + b_qkv)  (to heads)
                                                       O = xdna::Attention(Q, K, V)  (back to (b, n, h * d))

so that ``fuse_matmul`` then takes the packed projection. Only the unmasked, non-causal form without
past is taken; a fused node placed on the CPU is written back as the contrib node itself (plus the
layout to heads).

ONNX Runtime's contrib ``MultiHeadAttention`` (separate Q, K, V; what the bart optimizer writes for the
decoder with ``use_multi_head_attention``) is the fourth, through the same path:

    O = com.microsoft.MultiHeadAttention(Q, K, V, b)   ->   O = xdna::Attention(heads(Q + b_q), heads(K + b_k), heads(V + b_v))

with 3-D (b, n, h * d) key and value put in heads, 4-D (b, h, n, d) ones (cross-attention on the
cache) taken as they are. Masks, attention bias, past and present inside the op (the decoder's
self-attention with past) and the causal flag are refused with the reason: that node stays on ONNX
Runtime's CPU kernel, and ``inspect`` counts its FLOPs among the matrix work left on the CPU.

Multi-query attention (K and V of one head, which MatMul broadcasts over Q's heads) is fused with K and
V expanded to Q's heads (an ``Expand`` by (1, h, 1, 1) before the fused node); grouped-query attention
arrives with K and V already repeated to Q's heads (transformers' ``repeat_kv``: Unsqueeze, Expand,
Reshape), since MatMul cannot broadcast 2 heads to 6.

Refused with a reason, because the fused op cannot compute them: a Softmax over anything but the last
axis (before opset 13 the default axis is 1 and the tensor is flattened there), Q, K and V whose batch
or head counts differ otherwise, and operands that are not float32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import ModelProto, NodeProto, TensorProto, helper, numpy_helper

from xdna_ep.graph_passes import xdna_ops
from xdna_ep.graph_passes.graph import GraphView, Rewrite, add_constant, apply_rewrites
from xdna_ep.graph_passes.match_log import MatchLog
from xdna_ep.graph_passes.shapes import ShapeTable

PASS_NAME = "fuse_attention"
SOFTMAX_AXIS_OPSET = 13  # from opset 13 Softmax normalises one axis (default -1); before, it flattens at axis (default 1)
MASKED_AT_MOST = -1e4  # an additive mask entry this negative hides its key (exp underflows to 0)
LAYOUT_OPS = ("Transpose", "Reshape")
SHAPE_ONLY_OPS = ("Shape", "Size")  # ops that read only the shape of their input
_PROBE_INITIALIZER_ELEMENTS = 4096  # larger initializers enter the mask probe as zero inputs


# (domain, op type) -> why xdna-ep leaves it to ONNX Runtime
UNFUSED_ATTENTION_OPS: dict[tuple[str, str], str] = {}


class NoMatch(Exception):
    """The candidate is not attention; the message says why."""


@dataclass(frozen=True)
class Operand:
    """An attention operand traced back through scalar Mul/Div and layout ops (Reshape, Transpose).

    ``layout`` holds the layout nodes from ``base`` to the operand, in data-flow order; ``scale`` the
    product of the scalars met on the way; ``rebuild`` is True when a scalar sits before a layout op
    (the layout must then be re-emitted from the unscaled ``base``).
    """

    base: str
    layout: tuple[NodeProto, ...]
    scale: float
    walked: tuple[NodeProto, ...]
    rebuild: bool


@dataclass(frozen=True)
class AttentionMatch:
    probs_matmul: NodeProto  # P @ V: its output becomes the fused node's output
    scores_matmul: NodeProto  # Q @ K^T
    q: Operand
    k: Operand
    v: str
    scale: float
    mask: str | None
    nodes: tuple[NodeProto, ...]  # scores chain, softmax, NaN guard, P @ V
    # multi-query: K and V of one head, expanded to these (b, h, n_kv, d) and (b, h, n_kv, d_v) of Q's h heads
    broadcast: tuple[tuple[int, ...], tuple[int, ...]] | None = None


def fuse_attention(
    model: ModelProto, shapes: ShapeTable | None = None, log: MatchLog | None = None
) -> tuple[ModelProto, bool]:
    """Fuse every attention subgraph anchored on a Softmax into xdna::Attention (in place)."""
    log = log if log is not None else MatchLog()
    view = GraphView(model.graph)
    opset = default_opset(model)
    matches: list[tuple[NodeProto, AttentionMatch]] = []
    onnx_rewrites: list[tuple[Rewrite, str, str | None]] = []  # (rewrite, kind, mask to probe)
    for node in list(model.graph.node):
        unfused = UNFUSED_ATTENTION_OPS.get(("" if node.domain == "ai.onnx" else node.domain, node.op_type))
        if unfused:
            log.reject(PASS_NAME, node.name, unfused)
            continue
        if node.op_type == "Attention" and node.domain in ("", "ai.onnx"):
            try:
                onnx_rewrites.append((*rewrite_onnx_attention(view, node, shapes), _onnx_attention_mask(node)))
            except NoMatch as reason:
                log.reject(PASS_NAME, node.name or node.output[0], f"ONNX Attention not fused: {reason}")
            continue
        if node.op_type == "Attention" and node.domain == "com.microsoft":
            try:
                onnx_rewrites.append((*rewrite_contrib_attention(view, node, shapes, opset), None))
            except NoMatch as reason:
                log.reject(PASS_NAME, node.name or node.output[0], f"contrib Attention not fused: {reason}")
            continue
        if node.op_type == "MultiHeadAttention" and node.domain == "com.microsoft":
            try:
                onnx_rewrites.append((*rewrite_contrib_multihead_attention(view, node, shapes), None))
            except NoMatch as reason:
                log.reject(PASS_NAME, node.name or node.output[0], f"contrib MultiHeadAttention not fused: {reason}")
            continue
        if node.op_type != "Softmax" or node.domain not in ("", "ai.onnx"):
            continue
        try:
            matches.append((node, match_attention(view, node, shapes, opset)))
        except NoMatch as reason:
            log.reject(PASS_NAME, node.name, str(reason))
    masked = [(match.mask, match.scores_matmul.output[0]) for _, match in matches if match.mask]
    virtual_scores = {}  # an ONNX Attention node has no scores tensor: its shape is Q's (b, h, n_q) and K's n_kv
    for rewrite, _, mask in onnx_rewrites:
        if mask:
            virtual_scores[_virtual_scores_name(rewrite.anchor)] = (rewrite.anchor.input[0], rewrite.anchor.input[1])
            masked.append((mask, _virtual_scores_name(rewrite.anchor)))
    mask_reasons = probe_masks(model, masked, virtual_scores)
    rewrites = []
    for softmax, match in matches:
        reason = mask_reasons.get((match.mask, match.scores_matmul.output[0])) if match.mask else None
        if reason:
            log.reject(PASS_NAME, softmax.name, reason)
            continue
        try:
            rewrite, kind = build_rewrite(view, match, shapes)
        except NoMatch as reason:
            log.reject(PASS_NAME, softmax.name, str(reason))
            continue
        rewrites.append(rewrite)
        log.add_fused(f"attention.{kind}")
    for rewrite, kind, mask in onnx_rewrites:
        reason = mask_reasons.get((mask, _virtual_scores_name(rewrite.anchor))) if mask else None
        if reason:
            log.reject(PASS_NAME, rewrite.anchor.name or rewrite.anchor.output[0], f"ONNX Attention not fused: {reason}")
            continue
        rewrites.append(rewrite)
        log.add_fused(f"attention.{kind}")
    apply_rewrites(model, view, rewrites)
    return model, bool(rewrites)


def default_opset(model: ModelProto) -> int:
    """The model's opset of the default ONNX domain."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def softmax_is_last_axis(softmax: NodeProto, rank: int, opset: int) -> str | None:
    """None when ``softmax`` normalises exactly the last axis of its rank-``rank`` input, else why not.

    Before opset 13 the default axis is 1 and the input is flattened to 2-D at ``axis``: that equals a
    last-axis softmax only when ``axis`` is the last axis. ``rank`` 0 means unknown.
    """
    default = -1 if opset >= SOFTMAX_AXIS_OPSET else 1
    axis = int(_attribute(softmax, "axis", default))
    if axis == -1 or (rank and axis == rank - 1):
        return None
    where = "default axis" if not any(a.name == "axis" for a in softmax.attribute) else "axis"
    flatten = f" (opset {opset} < {SOFTMAX_AXIS_OPSET}: it flattens the input from axis {axis} on)" if opset < SOFTMAX_AXIS_OPSET else ""
    return f"Softmax {where} {axis} is not the last axis of its rank-{rank or '?'} input{flatten}"


def match_attention(
    view: GraphView, softmax: NodeProto, shapes: ShapeTable | None, opset: int = SOFTMAX_AXIS_OPSET
) -> AttentionMatch:
    """Match O = Softmax(Q @ K^T * scale [+ mask]) @ V around ``softmax``; raise NoMatch with the reason."""
    rank = len(shapes.shape(softmax.input[0]) or ()) if shapes else 0
    axis_problem = softmax_is_last_axis(softmax, rank, opset)
    if axis_problem:
        raise NoMatch(axis_problem)
    probs, guard_nodes = _skip_nan_guard(view, softmax)
    consumers = view.consumers(probs)
    if view.is_graph_output(softmax.output[0]) or view.is_graph_output(probs):
        raise NoMatch("the attention probabilities are a graph output")
    if len(consumers) != 1 or consumers[0].op_type != "MatMul" or consumers[0].input[0] != probs:
        raise NoMatch("the probabilities are not consumed by exactly one MatMul P @ V")
    probs_matmul = consumers[0]
    scores, scale, mask, chain = _trace_scores(view, softmax.input[0])
    scores_matmul = view.producer_of(scores, "MatMul")
    if scores_matmul is None:
        raise NoMatch(f"the softmax input is not Q @ K^T (with optional scale and mask): {chain}")
    q = trace_operand(view, scores_matmul.input[0])
    k = fold_batched_transpose(view, trace_operand(view, scores_matmul.input[1]), shapes)
    v = probs_matmul.input[1]
    if shapes is not None:
        operand_shapes = {}
        for role, name in (("Q", scores_matmul.input[0]), ("K^T", scores_matmul.input[1]), ("V", v)):
            shape = shapes.shape(name)
            if shape is None:
                raise NoMatch(f"the shape of {role} is unknown at the representative sizes")
            if len(shape) != 4:
                raise NoMatch(f"{role} has rank {len(shape)}, not 4 (batch, heads, positions, head_dim)")
            if shapes.is_float32(name) is not True:
                raise NoMatch(f"{role} is not float32 (only float32 crosses to the xdna ops)")
            operand_shapes[role] = shape
        broadcast = _check_operand_shapes(operand_shapes["Q"], operand_shapes["K^T"], operand_shapes["V"])
    else:
        broadcast = None
    nodes = (*chain_nodes(view, softmax.input[0], scores), softmax, *guard_nodes, probs_matmul)
    return AttentionMatch(
        probs_matmul=probs_matmul,
        scores_matmul=scores_matmul,
        q=q,
        k=k,
        v=v,
        scale=scale * q.scale * k.scale,
        mask=mask,
        nodes=(scores_matmul, *nodes),
        broadcast=broadcast,
    )


def _check_operand_shapes(
    q: tuple[int, ...], k_t: tuple[int, ...], v: tuple[int, ...]
) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """Q (b, h, n_q, d), K^T (b, h, d, n_kv), V (b, h, n_kv, d_v) with equal b and h, else NoMatch.

    ONNX MatMul broadcasts a K and V of one head over Q's heads (multi-query attention): that is taken,
    and the shapes of K and V expanded to Q's heads are returned (None when the heads are equal). Any other
    difference (batch, or a K or V of one head with the other of h) is refused. Grouped-query
    attention cannot broadcast in MatMul (2 heads do not broadcast to 6); exporters repeat K and V to
    Q's heads first (``repeat_kv``), which arrives here with equal heads.
    """
    if q[3] != k_t[2] or k_t[3] != v[2]:
        raise NoMatch(f"Q {q}, K^T {k_t} and V {v} are not Q (b, h, n_q, d), K^T (b, h, d, n_kv), V (b, h, n_kv, d_v)")
    if q[:2] == k_t[:2] == v[:2]:
        return None
    if q[0] == k_t[0] == v[0] and k_t[1] == v[1] == 1:
        return (k_t[0], q[1], k_t[3], k_t[2]), (v[0], q[1], v[2], v[3])
    raise NoMatch(
        f"Q {q}, K^T {k_t} and V {v} differ in batch or heads other than K and V of one head broadcast over "
        "Q's (multi-query attention), which is all xdna::Attention takes of broadcast heads"
    )


_ONNX_ATTENTION_ATTRIBUTES = ("is_causal", "scale", "softmax_precision", "q_num_heads", "kv_num_heads", "softcap", "qk_matmul_output_mode")
_ONNX_ATTENTION_UNSUPPORTED_INPUTS = {4: "a past_key", 5: "a past_value", 6: "nonpad_kv_seqlen"}


def _onnx_attention_mask(node: NodeProto) -> str | None:
    """The attn_mask input of an ONNX Attention node, or None."""
    return node.input[3] if len(node.input) > 3 and node.input[3] else None


def _virtual_scores_name(node: NodeProto) -> str:
    return f"{node.output[0]}/xdna_scores"


def _refuse_extras(node: NodeProto, inputs: dict[int, str], outputs: str, attributes: tuple[str, ...]) -> None:
    """NoMatch naming the first optional input, extra output or attribute xdna::Attention does not compute."""
    for index, what in inputs.items():
        if index < len(node.input) and node.input[index]:
            raise NoMatch(f"it has {what} input")
    if any(name for name in node.output[1:]):
        raise NoMatch(f"it has {outputs}")
    unknown = sorted(a.name for a in node.attribute if a.name not in attributes)
    if unknown:
        raise NoMatch(f"attribute(s) {', '.join(unknown)} are not among those xdna::Attention computes")


def _qkv_shapes(node: NodeProto, shapes: ShapeTable | None) -> list[tuple[int, ...]]:
    """The shapes of the node's first three inputs (Q, K, V); NoMatch when unknown or not float32."""
    if shapes is None:
        raise NoMatch("no shapes")
    found = [shapes.shape(name) for name in node.input[:3]]
    if any(shape is None for shape in found):
        raise NoMatch("the shapes of Q, K, V are unknown at the representative sizes")
    if not all(shapes.is_float32(name) for name in node.input[:3]):
        raise NoMatch("Q, K, V are not float32 (only float32 crosses to the xdna ops)")
    return found


def rewrite_onnx_attention(view: GraphView, node: NodeProto, shapes: ShapeTable | None) -> tuple[Rewrite, str]:
    """The xdna::Attention rewrite of one ONNX Attention node, and its kind; NoMatch with the reason."""
    _refuse_extras(node, _ONNX_ATTENTION_UNSUPPORTED_INPUTS, "present or qk_matmul outputs", _ONNX_ATTENTION_ATTRIBUTES)
    for name, what in (("softcap", "a softcap"), ("qk_matmul_output_mode", "a qk_matmul_output_mode")):
        if _attribute(node, name, 0):
            raise NoMatch(f"it has {what}")
    q, k, v = _qkv_shapes(node, shapes)
    if len(q) == 4 and len(k) == 4 and len(v) == 4:
        q4, k4, v4 = q, k, v
    elif len(q) == 3 and len(k) == 3 and len(v) == 3:
        q_heads, kv_heads = int(_attribute(node, "q_num_heads", 0)), int(_attribute(node, "kv_num_heads", 0))
        if not q_heads or not kv_heads or q[2] % q_heads or k[2] % kv_heads or v[2] % kv_heads:
            raise NoMatch(f"3-D Q {q}, K {k}, V {v} with q_num_heads {q_heads}, kv_num_heads {kv_heads} do not split into heads")
        q4 = (q[0], q_heads, q[1], q[2] // q_heads)
        k4 = (k[0], kv_heads, k[1], k[2] // kv_heads)
        v4 = (v[0], kv_heads, v[1], v[2] // kv_heads)
    else:
        raise NoMatch(f"Q {q}, K {k}, V {v} are not all 3-D or all 4-D")
    if q4[:2] != k4[:2] or q4[:2] != v4[:2]:
        raise NoMatch(f"Q has {q4[1]} heads, K and V {k4[1]}, {v4[1]} (grouped-query attention broadcasts them)")
    if not (q4[3] == k4[3] == v4[3]) or k4[2] != v4[2]:
        raise NoMatch(f"head sizes of Q {q4[3]}, K {k4[3]}, V {v4[3]} differ (xdna::Attention takes equal ones)")
    causal = bool(_attribute(node, "is_causal", 0))
    mask = _onnx_attention_mask(node)
    if mask:
        if causal:
            raise NoMatch("it has both is_causal and an attn_mask")
        if len(q) != 4:
            raise NoMatch("an attn_mask with 3-D Q, K, V")
        if shapes.elem_types.get(mask) not in (TensorProto.BOOL, TensorProto.FLOAT):
            raise NoMatch("its attn_mask is neither boolean nor float32")
    if causal and q4[2] != k4[2]:
        raise NoMatch(
            f"is_causal with {q4[2]} queries and {k4[2]} keys: ONNX aligns the causal mask to the first key, "
            "xdna::Attention to the last"
        )
    scale = float(_attribute(node, "scale", 1.0 / np.sqrt(q4[3])))
    q_source, k_source = _projection_source(view, node.input[0]), _projection_source(view, node.input[1])
    if mask and (q_source is None or q_source != k_source):
        raise NoMatch("an attn_mask on attention whose K does not come from the queries' states")
    kind = "causal_self" if causal or mask else ("self" if q_source is not None and q_source == k_source else "cross")
    causal = causal or bool(mask)  # the probe must find the mask causal, or the node is not fused
    name = view.fresh_name(f"{node.name or node.output[0]}/xdna_attention")
    keep = [a for a in node.attribute if a.name in ("is_causal", "scale", "softmax_precision")]
    if len(q) == 4:
        fused = xdna_ops.make_attention(*node.input[:3], node.output[0], name, scale=scale, causal=causal, kind=kind)
        return Rewrite(fused=fused, anchor=node, matched=[node]), kind
    helpers: list[NodeProto] = []
    heads = []
    for tensor, shape4 in zip(node.input[:3], (q4, k4, v4)):
        split = add_constant(view, helpers, np.array([0, 0, shape4[1], shape4[3]], np.int64))
        reshaped = view.fresh_name(f"{tensor}/xdna_heads")
        heads_tensor = view.fresh_name(f"{tensor}/xdna_bhnd")
        helpers.append(helper.make_node("Reshape", [tensor, split], [reshaped], name=reshaped))
        helpers.append(helper.make_node("Transpose", [reshaped], [heads_tensor], name=heads_tensor, perm=[0, 2, 1, 3]))
        shapes.shapes[heads_tensor] = (shape4[0], shape4[1], shape4[2], shape4[3])
        shapes.elem_types[heads_tensor] = TensorProto.FLOAT
        heads.append(heads_tensor)
    fused_out = view.fresh_name(f"{node.output[0]}/xdna_bhnd")
    shapes.shapes[fused_out] = (q4[0], q4[1], q4[2], v4[3])
    fused = xdna_ops.make_attention(*heads, fused_out, name, scale=scale, causal=causal, kind=kind)
    merged = view.fresh_name(f"{node.output[0]}/xdna_bnhd")
    merge = add_constant(view, helpers, np.array([0, 0, q4[1] * v4[3]], np.int64))
    after = [
        helper.make_node("Transpose", [fused_out], [merged], name=merged, perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", [merged, merge], [node.output[0]], name=view.fresh_name(f"{node.output[0]}/xdna_merge")),
    ]
    original = helper.make_node("Attention", heads, [fused_out], name=view.fresh_name(f"{node.name}/bhnd"))
    original.attribute.extend(keep)
    return Rewrite(fused=fused, anchor=node, matched=[node], helpers=helpers, after=after, originals=[original]), kind


_CONTRIB_ATTENTION_ATTRIBUTES = ("num_heads", "scale", "unidirectional", "qkv_hidden_sizes", "mask_filter_value", "do_rotary")


def rewrite_contrib_attention(
    view: GraphView, node: NodeProto, shapes: ShapeTable | None, opset: int
) -> tuple[Rewrite, str]:
    """The rewrite of one com.microsoft Attention (packed QKV) node, and its kind; NoMatch with the reason."""
    if any(name for name in node.input[3:]):
        raise NoMatch("it has a mask, past or attention-bias input")
    if any(name for name in node.output[1:]):
        raise NoMatch("it has a present output")
    unknown = sorted(a.name for a in node.attribute if a.name not in _CONTRIB_ATTENTION_ATTRIBUTES)
    if unknown:
        raise NoMatch(f"attribute(s) {', '.join(unknown)} are not among those xdna::Attention computes")
    if _attribute(node, "unidirectional", 0) or _attribute(node, "do_rotary", 0):
        raise NoMatch("it is unidirectional (causal) or rotary")
    if len(node.input) < 3 or not node.input[2] or shapes is None:
        raise NoMatch("it has no bias input")
    x, weight, bias = (shapes.shape(name) for name in node.input[:3])
    if x is None or weight is None or bias is None or len(x) != 3 or len(weight) != 2:
        raise NoMatch("the shapes of its input, weight and bias are unknown or not (b, n, in), (in, 3 * hidden)")
    if not all(shapes.is_float32(name) for name in node.input[:3]):
        raise NoMatch("its input, weight or bias is not float32 (only float32 crosses to the xdna ops)")
    n_head = int(_attribute(node, "num_heads", 0))
    hidden_sizes = list(_attribute(node, "qkv_hidden_sizes", []))
    hidden = weight[1] // 3
    if weight[1] % 3 or (hidden_sizes and len(set(hidden_sizes)) != 1) or not n_head or hidden % n_head:
        raise NoMatch(f"weight {weight} with {n_head} heads does not split into equal Q, K, V heads")
    head_dim = hidden // n_head
    scale = float(_attribute(node, "scale", 0.0)) or 1.0 / float(np.sqrt(head_dim))
    batch, n_pos = x[0], x[1]
    helpers: list[NodeProto] = []

    def add(op_type: str, inputs: list[str], shape: tuple[int, ...], **attrs) -> str:
        out = view.fresh_name(f"{node.name}/xdna_{op_type.lower()}")
        helpers.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        shapes.shapes[out], shapes.elem_types[out] = shape, TensorProto.FLOAT
        return out

    packed = add("Add", [add("MatMul", list(node.input[:2]), (batch, n_pos, 3 * hidden)), node.input[2]], (batch, n_pos, 3 * hidden))
    parts = [view.fresh_name(f"{node.name}/xdna_{name}") for name in "qkv"]
    if opset >= 13:
        sizes = add_constant(view, helpers, np.array([hidden] * 3, np.int64))
        helpers.append(helper.make_node("Split", [packed, sizes], parts, name=parts[0], axis=-1))
    else:
        helpers.append(helper.make_node("Split", [packed], parts, name=parts[0], axis=-1, split=[hidden] * 3))
    to_heads = add_constant(view, helpers, np.array([0, 0, n_head, head_dim], np.int64))
    heads = []
    for part in parts:
        shapes.shapes[part], shapes.elem_types[part] = (batch, n_pos, hidden), TensorProto.FLOAT
        split_heads = add("Reshape", [part, to_heads], (batch, n_pos, n_head, head_dim))
        heads.append(add("Transpose", [split_heads], (batch, n_head, n_pos, head_dim), perm=[0, 2, 1, 3]))
    rewrite = _contrib_rewrite(view, node, shapes, helpers, heads, (batch, n_head, n_pos, head_dim), scale, "self")
    return rewrite, "self"


def _contrib_rewrite(
    view: GraphView,
    node: NodeProto,
    shapes: ShapeTable,
    helpers: list[NodeProto],
    heads: list[str],
    out_shape: tuple[int, int, int, int],
    scale: float,
    kind: str,
) -> Rewrite:
    """xdna::Attention on ``heads`` (Q, K, V, each (b, h, n, d)) in place of the contrib ``node``.

    Its (b, h, n_q, d) output goes back to the contrib node's (b, n_q, h * d) output; on the CPU the
    contrib node itself is written back, its output put in heads as the fused node's.
    """
    _, n_head, _, head_dim = out_shape
    fused_out = view.fresh_name(f"{node.output[0]}/xdna_bhnd")
    shapes.shapes[fused_out] = out_shape
    name = view.fresh_name(f"{node.name or node.output[0]}/xdna_attention")
    fused = xdna_ops.make_attention(*heads, fused_out, name, scale=scale, causal=False, kind=kind)
    merged = view.fresh_name(f"{node.output[0]}/xdna_bnhd")
    to_hidden = add_constant(view, helpers, np.array([0, 0, n_head * head_dim], np.int64))
    after = [
        helper.make_node("Transpose", [fused_out], [merged], name=merged, perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", [merged, to_hidden], [node.output[0]], name=view.fresh_name(f"{node.output[0]}/xdna_merge")),
    ]
    contrib_out = view.fresh_name(f"{node.output[0]}/contrib")
    original = onnx_node_copy(node)
    original.output[0] = contrib_out
    heads_shape = view.fresh_name(f"{node.name}/heads_shape")
    heads_out = view.fresh_name(f"{node.output[0]}/heads")
    originals = [
        original,
        helper.make_node("Constant", [], [heads_shape], name=heads_shape,
                         value=numpy_helper.from_array(np.array([0, 0, n_head, head_dim], np.int64))),
        helper.make_node("Reshape", [contrib_out, heads_shape], [heads_out], name=heads_out),
        helper.make_node("Transpose", [heads_out], [fused_out], name=fused_out + "/t", perm=[0, 2, 1, 3]),
    ]  # fmt: skip
    return Rewrite(fused=fused, anchor=node, matched=[node], helpers=helpers, after=after, originals=originals)


_MHA_ATTRIBUTES = ("num_heads", "scale", "unidirectional", "mask_filter_value")
_MHA_UNSUPPORTED_INPUTS = {
    4: "a key_padding_mask", 5: "an attention_bias", 6: "a past_key (past inside the op)",
    7: "a past_value (past inside the op)", 8: "a past_sequence_length", 9: "a cache_indirection",
}  # fmt: skip


def rewrite_contrib_multihead_attention(view: GraphView, node: NodeProto, shapes: ShapeTable | None) -> tuple[Rewrite, str]:
    """The rewrite of one com.microsoft MultiHeadAttention node, and its kind; NoMatch with the reason.

    Taken: query (b, n_q, h * d); key and value (b, n_kv, h * d), or (b, h, n_kv, d) as they are
    (cross-attention on a cache); an optional constant bias (3 * h * d,) added to the 3-D ones (zero
    for 4-D key and value). Refused: masks, attention bias, past or present inside the op, causal
    (unidirectional), packed QKV or KV, operands that are not float32.
    """
    _refuse_extras(node, _MHA_UNSUPPORTED_INPUTS, "present or qk outputs (past inside the op)", _MHA_ATTRIBUTES)
    if _attribute(node, "unidirectional", 0):
        raise NoMatch("it is unidirectional (causal)")
    if len(node.input) < 3 or not node.input[1] or not node.input[2]:
        raise NoMatch("it has no separate key and value inputs (packed QKV or KV)")
    query, key, value = _qkv_shapes(node, shapes)
    n_head = int(_attribute(node, "num_heads", 0))
    if len(query) != 3 or not n_head or query[2] % n_head:
        raise NoMatch(f"query {query} with {n_head} heads is not (b, n_q, num_heads * head_size)")
    hidden = query[2]
    head_dim = hidden // n_head
    batch = query[0]
    if len(key) == len(value) == 3:
        expected = [(batch, key[1], hidden), (batch, key[1], hidden)]
    elif len(key) == len(value) == 4:
        expected = [(batch, n_head, key[2], head_dim)] * 2
    else:
        raise NoMatch(f"key {key} and value {value} are not both (b, n_kv, hidden) or both (b, h, n_kv, d) (packed KV?)")
    if [tuple(key), tuple(value)] != expected:
        raise NoMatch(f"query {query}, key {key}, value {value} differ in batch, heads or head size")
    bias = None
    if len(node.input) > 3 and node.input[3]:
        bias = view.constant(node.input[3])
        if bias is None or bias.shape != (3 * hidden,):
            raise NoMatch("its bias is not a constant of 3 * hidden values")
        if len(key) == 4 and np.any(bias[hidden:]):
            raise NoMatch("it adds a key/value bias to a (b, h, n_kv, d) key and value")
    scale = float(_attribute(node, "scale", 0.0)) or 1.0 / float(np.sqrt(head_dim))
    helpers: list[NodeProto] = []

    def to_heads(tensor: str, part: int) -> str:
        """(b, n, hidden) [+ bias part] -> (b, h, n, d)"""
        n_pos = shapes.shape(tensor)[1]
        if bias is not None and np.any(bias[part * hidden : (part + 1) * hidden]):
            part_bias = add_constant(view, helpers, np.ascontiguousarray(bias[part * hidden : (part + 1) * hidden]))
            biased = view.fresh_name(f"{tensor}/xdna_bias")
            helpers.append(helper.make_node("Add", [tensor, part_bias], [biased], name=biased))
            shapes.shapes[biased], shapes.elem_types[biased] = (batch, n_pos, hidden), TensorProto.FLOAT
            tensor = biased
        split = add_constant(view, helpers, np.array([0, 0, n_head, head_dim], np.int64))
        reshaped = view.fresh_name(f"{tensor}/xdna_heads")
        heads_tensor = view.fresh_name(f"{tensor}/xdna_bhnd")
        helpers.append(helper.make_node("Reshape", [tensor, split], [reshaped], name=reshaped))
        helpers.append(helper.make_node("Transpose", [reshaped], [heads_tensor], name=heads_tensor, perm=[0, 2, 1, 3]))
        shapes.shapes[heads_tensor], shapes.elem_types[heads_tensor] = (batch, n_head, n_pos, head_dim), TensorProto.FLOAT
        return heads_tensor

    heads = [to_heads(node.input[0], 0)]
    heads += [to_heads(node.input[i], i) for i in (1, 2)] if len(key) == 3 else list(node.input[1:3])
    q_source = _projection_source(view, node.input[0])
    kind = "self" if len(key) == 3 and q_source is not None and q_source == _projection_source(view, node.input[1]) else "cross"
    rewrite = _contrib_rewrite(view, node, shapes, helpers, heads, (batch, n_head, query[1], head_dim), scale, kind)
    return rewrite, kind


def onnx_node_copy(node: NodeProto) -> NodeProto:
    return NodeProto.FromString(node.SerializeToString())


def _expand_heads(
    view: GraphView, helpers: list[NodeProto], shapes: ShapeTable | None, tensor: str, repeat: str, shape: tuple[int, ...]
) -> str:
    """Expand(tensor (b, 1, n, d), (1, h, 1, 1)) -> (b, h, n, d): what MatMul's broadcast computes with it."""
    out = view.fresh_name(f"{tensor}/xdna_expand_heads")
    helpers.append(helper.make_node("Expand", [tensor, repeat], [out], name=out))
    if shapes is not None:
        shapes.shapes[out], shapes.elem_types[out] = shape, TensorProto.FLOAT
    return out


def build_rewrite(view: GraphView, match: AttentionMatch, shapes: ShapeTable | None = None) -> tuple[Rewrite, str]:
    """The xdna::Attention node (and any layout nodes it needs) for a match, and the attention kind."""
    helpers: list[NodeProto] = []
    q_tensor = _emit_layout(view, match.q, helpers, swap_last_axes=False)
    k_tensor = _emit_layout(view, match.k, helpers, swap_last_axes=True)
    v_tensor = match.v
    if match.broadcast is not None:  # multi-query: K and V of one head, expanded to Q's heads
        k_shape, v_shape = match.broadcast
        repeat = add_constant(view, helpers, np.array([1, k_shape[1], 1, 1], np.int64))
        k_tensor = _expand_heads(view, helpers, shapes, k_tensor, repeat, k_shape)
        v_tensor = _expand_heads(view, helpers, shapes, v_tensor, repeat, v_shape)
    kind = _attention_kind(view, match)
    out = match.probs_matmul.output[0]
    name = view.fresh_name(f"{match.probs_matmul.name or out}/xdna_attention")
    fused = xdna_ops.make_attention(
        q_tensor, k_tensor, v_tensor, out, name, scale=match.scale, causal=match.mask is not None, kind=kind
    )
    # Nodes whose outputs the fused node or its helpers read stay; the rest of the pattern may go.
    kept = {q_tensor, k_tensor, match.v} | {name for node in helpers for name in node.input}
    walked = (*match.nodes, *match.q.walked, *match.k.walked)
    matched = [node for node in walked if not (set(node.output) & kept)]
    return Rewrite(fused=fused, anchor=match.probs_matmul, matched=_unique(matched), helpers=helpers), kind


def trace_operand(view: GraphView, name: str) -> Operand:
    """Walk back from ``name`` through scalar Mul/Div and Reshape/Transpose nodes."""
    scale = 1.0
    layout_reversed: list[NodeProto] = []
    walked: list[NodeProto] = []
    rebuild = False
    while True:
        node = view.producer(name)
        if node is None or node.domain not in ("", "ai.onnx"):
            break
        if node.op_type in ("Mul", "Div"):
            scalar_input = _scalar_operand(view, node)
            if scalar_input is None:
                break
            value, other = scalar_input
            scale = scale * value if node.op_type == "Mul" else scale / value
            rebuild = rebuild or bool(layout_reversed)
            walked.append(node)
            name = other
            continue
        if node.op_type in LAYOUT_OPS:
            layout_reversed.append(node)
            walked.append(node)
            name = node.input[0]
            continue
        break
    return Operand(base=name, layout=tuple(reversed(layout_reversed)), scale=scale, walked=tuple(walked), rebuild=rebuild)


def fold_batched_transpose(view: GraphView, operand: Operand, shapes: ShapeTable | None) -> Operand:
    """K^T written through three dimensions as one 4-D Transpose (0, 1, 3, 2), where the shapes show it.

        Reshape K (b, h, n, d) -> (b * h, n, d);  Transpose (0, 2, 1);  Reshape -> (b, h, d, n)

    is torch's dynamo export of SDPA's ``k.transpose(-2, -1)``. The operand comes back with the three
    nodes replaced in its layout by an equivalent Transpose (a new node, not in the graph; the three
    stay in ``walked`` so that they leave with the pattern). Anything else is returned unchanged.
    """
    layout = operand.layout
    if shapes is None or len(layout) < 3:
        return operand
    merge, swap, split = layout[-3:]
    if (merge.op_type, swap.op_type, split.op_type) != ("Reshape", "Transpose", "Reshape"):
        return operand
    if list(_attribute(swap, "perm", [])) != [0, 2, 1]:
        return operand
    k4, merged, swapped = shapes.shape(merge.input[0]), shapes.shape(merge.output[0]), shapes.shape(split.output[0])
    if k4 is None or merged is None or swapped is None or len(k4) != 4:
        return operand
    b, h, n, d = k4
    if merged != (b * h, n, d) or swapped != (b, h, d, n):
        return operand
    transpose = helper.make_node("Transpose", [merge.input[0]], [split.output[0]], perm=[0, 1, 3, 2])
    return Operand(
        base=operand.base, layout=(*layout[:-3], transpose), scale=operand.scale, walked=operand.walked, rebuild=operand.rebuild
    )


def probe_masks(
    model: ModelProto, masked: list[tuple[str, str]], virtual_scores: dict[str, tuple[str, str]] | None = None
) -> dict[tuple[str, str], str | None]:
    """For each (mask, scores it applies to): None if the mask is exactly causal, else the reason.

    A mask is additive (float) or boolean (True = attend, ONNX Attention's ``attn_mask``). Scores named
    in ``virtual_scores`` are no tensor of the graph: their shape is that of Q @ K^T for the (Q, K) given.

    First by structure: the mask may depend on the inputs' shapes (through Shape / Size) but on no
    input's values, so that the probes below decide it for every input. Then by evaluation: the mask
    and the scores' shape are computed with ONNX Runtime at two sets of sizes (every symbolic input
    dimension gets its own size, different in each probe) and the mask must hide exactly the keys after
    each query's position (queries aligned to the end of the keys, as a decoder with past has them).
    """
    pairs = sorted(set(masked))
    if not pairs:
        return {}
    view = GraphView(model.graph)
    reasons: dict[tuple[str, str], str | None] = {}
    probed = []
    for pair in pairs:
        dependence = _value_dependence(view, pair[0])
        if dependence:
            reasons[pair] = f"the attention mask depends on the values of {dependence}, not only on shapes"
        else:
            probed.append(pair)
    if not probed:
        return reasons
    try:
        probes = [_run_mask_probe(model, probed, probe, virtual_scores or {}) for probe in (0, 1)]
    except Exception as error:  # noqa: BLE001 - ORT raises its own types; the reason is what matters
        reasons.update({pair: f"the attention mask could not be evaluated on probe inputs: {error}" for pair in probed})
        return reasons
    for pair in probed:
        reasons[pair] = None
        for values in probes:
            mask, scores_shape = values[pair[0]], tuple(int(d) for d in values[_shape_name(pair[1])])
            reason = _causal_mismatch(mask, scores_shape)
            if reason:
                reasons[pair] = f"the attention mask is not causal: {reason}"
                break
    return reasons


def _value_dependence(view: GraphView, mask: str) -> str:
    """The graph inputs and large initializers whose values (not only shapes) reach ``mask``, named."""
    found: list[str] = []
    seen: set[str] = set()
    stack = [mask]
    while stack:
        name = stack.pop()
        if not name or name in seen:
            continue
        seen.add(name)
        if name in view.inputs and name not in view.initializers:
            found.append(f"input {name!r}")
            continue
        if name in view.initializers:
            if math.prod(map(int, view.initializers[name].dims)) > _PROBE_INITIALIZER_ELEMENTS:
                found.append(f"initializer {name!r}")
            continue
        node = view.producer(name)
        if node is None:
            found.append(f"{name!r} (produced outside this graph)")
            continue
        if node.op_type in SHAPE_ONLY_OPS and node.domain in ("", "ai.onnx"):
            continue  # reads only the shape of its input
        stack.extend(node.input)
    return ", ".join(sorted(found))



def _shape_name(scores: str) -> str:
    return f"{scores}/xdna_probe_shape"


def chain_nodes(view: GraphView, start: str, stop: str) -> list[NodeProto]:
    """Nodes on the scores chain from ``stop`` (exclusive) to ``start`` (inclusive)."""
    nodes = []
    name = start
    while name != stop:
        node = view.producer(name)
        nodes.append(node)
        name = _chain_input(view, node)
    return nodes


# --- matching helpers ------------------------------------------------------------------------------


def _skip_nan_guard(view: GraphView, softmax: NodeProto) -> tuple[str, list[NodeProto]]:
    """P, or the output of Where(IsNaN(P), 0, P) when the exporter guards fully masked rows."""
    probs = softmax.output[0]
    consumers = view.consumers(probs)
    is_nan = [node for node in consumers if node.op_type == "IsNaN"]
    where = [node for node in consumers if node.op_type == "Where"]
    if len(consumers) == 2 and len(is_nan) == 1 and len(where) == 1:
        where_node, is_nan_node = where[0], is_nan[0]
        zero = view.scalar(where_node.input[1])
        if where_node.input[0] == is_nan_node.output[0] and zero == 0.0 and where_node.input[2] == probs:
            return where_node.output[0], [is_nan_node, where_node]
    return probs, []


def _trace_scores(view: GraphView, name: str) -> tuple[str, float, str | None, str]:
    """From the softmax input back to Q @ K^T: (scores tensor, scale, mask tensor or None, description)."""
    scale = 1.0
    mask = None
    path = []
    while True:
        node = view.producer(name)
        if node is None:
            return name, scale, mask, " <- ".join(path) or "graph input"
        path.append(node.op_type)
        if node.op_type == "MatMul":
            return name, scale, mask, " <- ".join(path)
        if len(view.consumers(name)) != 1:
            raise NoMatch(f"an intermediate of the scores ({name}) is also used elsewhere")
        if node.op_type in ("Mul", "Div"):
            scalar_input = _scalar_operand(view, node)
            if scalar_input is None:
                raise NoMatch(f"{node.op_type} on the scores is not by a scalar constant")
            value, name = scalar_input
            scale = scale * value if node.op_type == "Mul" else scale / value
            continue
        if node.op_type == "Add":
            scores_side = [index for index in (0, 1) if _reaches_matmul(view, node.input[index])]
            if len(scores_side) != 1:
                raise NoMatch("cannot tell the scores from the mask in the Add before the softmax")
            if mask is not None:
                raise NoMatch("more than one mask is added to the scores")
            mask = node.input[1 - scores_side[0]]
            if view.constant(mask) is not None:
                raise NoMatch("a constant is added to the scores (a bias, not a mask)")
            name = node.input[scores_side[0]]
            continue
        raise NoMatch(f"the softmax input comes from {node.op_type}, not from Q @ K^T (scale, mask)")


def _reaches_matmul(view: GraphView, name: str) -> bool:
    """True when ``name`` is a MatMul output, possibly through scalar Mul/Div."""
    for _ in range(4):
        node = view.producer(name)
        if node is None:
            return False
        if node.op_type == "MatMul":
            return True
        if node.op_type in ("Mul", "Div") and (scalar_input := _scalar_operand(view, node)) is not None:
            name = scalar_input[1]
            continue
        return False
    return False


def _chain_input(view: GraphView, node: NodeProto) -> str:
    """The scores-side input of a node on the scores chain (Mul/Div by scalar, Add of a mask)."""
    if node.op_type == "Add":
        return node.input[0] if _reaches_matmul(view, node.input[0]) else node.input[1]
    scalar_input = _scalar_operand(view, node)
    assert scalar_input is not None
    return scalar_input[1]


def _scalar_operand(view: GraphView, node: NodeProto) -> tuple[float, str] | None:
    """(scalar value, other input) of a binary Mul/Div by a one-element constant, else None."""
    if len(node.input) != 2:
        return None
    candidates = (1,) if node.op_type == "Div" else (1, 0)
    for index in candidates:
        value = view.scalar(node.input[index])
        other = node.input[1 - index]
        if value is not None and view.constant(other) is None:
            if node.op_type == "Div" and value == 0.0:
                return None
            return value, other
    return None


def _emit_layout(view: GraphView, operand: Operand, helpers: list[NodeProto], *, swap_last_axes: bool) -> str:
    """The operand as a (b, h, n, d) tensor without its scalars; new layout nodes go to ``helpers``.

    For K, the operand is K^T: the last Transpose's perm is composed with the swap of the last two
    axes (perm (0, 2, 3, 1) becomes (0, 2, 1, 3); (0, 1, 3, 2) becomes the identity and is dropped).
    Existing equal nodes are reused (the decoder's ``present.*.key`` transpose, for one).
    """
    steps = [(node.op_type, node) for node in operand.layout]
    changed = operand.rebuild
    if swap_last_axes:
        if not steps or steps[-1][0] != "Transpose":
            raise NoMatch("K^T is not produced by a Transpose of K")
        perm = list(_attribute(steps[-1][1], "perm", []))
        if len(perm) != 4:
            raise NoMatch(f"the Transpose giving K^T has perm {perm}, not a 4-D one")
        perm[2], perm[3] = perm[3], perm[2]
        steps = steps[:-1] + ([("Transpose", perm)] if perm != [0, 1, 2, 3] else [])
        changed = True
    if not changed:
        return operand.layout[-1].output[0] if operand.layout else operand.base
    tensor = operand.base
    for op_type, spec in steps:
        if op_type == "Transpose":
            perm = spec if isinstance(spec, list) else list(_attribute(spec, "perm", []))
            tensor = _reuse_or_add(view, helpers, "Transpose", [tensor], {"perm": perm})
        else:
            # allowzero exists from opset 14: copied only when the original has it
            attrs = {"allowzero": _attribute(spec, "allowzero", 0)} if any(a.name == "allowzero" for a in spec.attribute) else {}
            tensor = _reuse_or_add(view, helpers, "Reshape", [tensor, spec.input[1]], attrs)
    return tensor


def _reuse_or_add(view: GraphView, helpers: list[NodeProto], op_type: str, inputs: list[str], attrs: dict) -> str:
    """Output of an existing node computing exactly op_type(inputs, attrs), or of a new helper node."""
    for node in [*view.consumers(inputs[0]), *helpers]:
        if node.op_type == op_type and list(node.input) == inputs and _attributes_equal(node, attrs):
            return node.output[0]
    name = view.fresh_name(f"{inputs[0]}/xdna_{op_type.lower()}")
    helpers.append(helper.make_node(op_type, inputs, [name], name=name, **attrs))
    return name


def _attributes_equal(node: NodeProto, attrs: dict) -> bool:
    for key, value in attrs.items():
        default = 0 if key == "allowzero" else None
        actual = _attribute(node, key, default)
        if isinstance(actual, (list, tuple)):
            actual = list(actual)
        if actual != value:
            return False
    return True


def _attention_kind(view: GraphView, match: AttentionMatch) -> str:
    """causal_self (masked), self (Q and K projected from the same states) or cross."""
    q_source = _projection_source(view, match.q.base)
    k_source = _projection_source(view, match.k.base)
    if match.mask is not None:
        if q_source is not None and k_source is not None and q_source != k_source:
            raise NoMatch("a causal mask on attention whose K does not come from the queries' states")
        return "causal_self"
    if q_source is not None and q_source == k_source:
        return "self"
    return "cross"


def _projection_source(view: GraphView, name: str) -> str | None:
    """The states a Q/K tensor was projected from: walks back through layout ops, Concat (new part),
    scalar Mul/Div and bias Add to MatMul(states, W). A graph input (a past) is its own source."""
    for _ in range(16):
        node = view.producer(name)
        if node is None:
            return name
        if node.op_type in LAYOUT_OPS or node.op_type in ("Unsqueeze", "Expand"):  # Expand: K/V repeated to Q's heads
            name = node.input[0]
        elif node.op_type == "Concat":
            name = node.input[-1]
        elif node.op_type in ("Mul", "Div") and (scalar_input := _scalar_operand(view, node)) is not None:
            name = scalar_input[1]
        elif node.op_type == "Add" and len(node.input) == 2:
            constant_side = [i for i in (0, 1) if view.constant(node.input[i]) is not None]
            if len(constant_side) != 1:
                return None
            name = node.input[1 - constant_side[0]]
        elif node.op_type == "MatMul" and view.constant(node.input[1]) is not None:
            return view.resolve_identity(node.input[0])
        else:
            return None
    return None


def _scores_shape_nodes(scores: str, virtual_scores: dict[str, tuple[str, str]]) -> list[NodeProto]:
    """Nodes computing the shape of ``scores`` into ``_shape_name(scores)``: Shape(scores), or for a
    virtual one Concat(Shape(Q)[:3], Shape(K)[2:3]), the shape of Q @ K^T for 4-D Q and K."""
    if scores not in virtual_scores:
        return [helper.make_node("Shape", [scores], [_shape_name(scores)])]
    q, k = virtual_scores[scores]
    return [
        helper.make_node("Shape", [q], [f"{scores}/q_shape"], end=3),
        helper.make_node("Shape", [k], [f"{scores}/n_kv"], start=2, end=3),
        helper.make_node("Concat", [f"{scores}/q_shape", f"{scores}/n_kv"], [_shape_name(scores)], axis=0),
    ]


def _run_mask_probe(
    model: ModelProto, pairs: list[tuple[str, str]], probe: int, virtual_scores: dict[str, tuple[str, str]]
) -> dict[str, np.ndarray]:
    """Run the subgraph computing the masks and the scores' shapes; returns name -> value.

    Probe 0 and 1 give every symbolic input dimension a size of its own (different in each probe):
    the known Whisper dimensions a decoder-like size, any other a distinct small one.
    """
    import onnxruntime as ort

    from xdna_ep.graph_passes.graph import MAX_IR_VERSION

    graph = model.graph
    view = GraphView(graph)
    masks = sorted({mask for mask, _ in pairs})
    scores_names = sorted({s for _, s in pairs})
    shape_nodes = [node for scores in scores_names for node in _scores_shape_nodes(scores, virtual_scores)]
    shape_outputs = [_shape_name(scores) for scores in scores_names]
    wanted = [*masks, *shape_outputs]
    needed_nodes: list[NodeProto] = []
    seen: set[int] = set()
    stack = [*masks, *(node.input[0] for node in shape_nodes if node.op_type == "Shape")]
    needed_inputs: set[str] = set()
    needed_inits: set[str] = set()
    while stack:
        name = stack.pop()
        if name in view.initializers:
            needed_inits.add(name)
            continue
        if name in view.inputs:
            needed_inputs.add(name)
            continue
        node = view.producer(name)
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        needed_nodes.append(node)
        stack.extend(inp for inp in node.input if inp)
    needed_nodes.sort(key=lambda node: view.position[id(node)])
    sizes = _probe_sizes(graph, probe)
    feeds = {}
    inputs = []
    for value_info in graph.input:
        if value_info.name not in needed_inputs:
            continue
        tensor_type = value_info.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else sizes[d.dim_param or "?"] for d in tensor_type.shape.dim]
        dtype = helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
        feeds[value_info.name] = np.zeros(shape, dtype=dtype)
        inputs.append(value_info)
    inits = []
    for init in graph.initializer:
        if init.name not in needed_inits:
            continue
        if math.prod(map(int, init.dims)) <= _PROBE_INITIALIZER_ELEMENTS:
            inits.append(init)
        else:  # a large weight reaches the masks only through a Shape (checked): feed zeros, do not copy it
            inputs.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
            feeds[init.name] = np.zeros(list(init.dims), dtype=helper.tensor_dtype_to_np_dtype(init.data_type))
    outputs = [onnx.ValueInfoProto(name=name) for name in masks]  # float or bool: ONNX Runtime infers which
    outputs += [helper.make_tensor_value_info(name, TensorProto.INT64, None) for name in shape_outputs]
    probe_graph = helper.make_graph([*needed_nodes, *shape_nodes], "mask_probe", inputs, outputs, inits)
    probe_model = helper.make_model(probe_graph, opset_imports=[o for o in model.opset_import if o.domain != xdna_ops.DOMAIN])
    probe_model.ir_version = min(model.ir_version or MAX_IR_VERSION, MAX_IR_VERSION)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(probe_model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return dict(zip(wanted, session.run(wanted, feeds)))


# Probe sizes of optimum's decoder dimensions: (probe 0, probe 1). Any other symbolic dimension gets a
# size of its own from _OTHER_PROBE_SIZES, so that no two unknown dimensions can be confused.
_KNOWN_PROBE_SIZES = {"batch_size": (1, 2), "decoder_sequence_length": (3, 2), "past_decoder_sequence_length": (2, 5)}
_OTHER_PROBE_SIZES = ((4, 7), (6, 3), (5, 9), (8, 4), (7, 6), (9, 8))


def _probe_sizes(graph, probe: int) -> dict[str, int]:
    names = sorted({
        d.dim_param or "?" for value_info in graph.input for d in value_info.type.tensor_type.shape.dim
        if not d.HasField("dim_value")
    })  # fmt: skip
    sizes, others = {}, iter(_OTHER_PROBE_SIZES)
    for name in names:
        pair = _KNOWN_PROBE_SIZES.get(name) or next(others, (2, 3))
        sizes[name] = pair[probe]
    return sizes


def _causal_mismatch(values: np.ndarray, scores_shape: tuple[int, ...]) -> str | None:
    """None if the mask (additive, or boolean: True = attend), broadcast to the scores, is causal; else what differs."""
    if values.dtype == np.bool_:
        values = np.where(values, np.float32(0.0), np.float32(-np.inf))
    if values.ndim < 2 or len(scores_shape) < 2:
        return f"mask has rank {values.ndim}"
    n_q, n_kv = scores_shape[-2:]
    try:
        planes = np.broadcast_to(values, np.broadcast_shapes(values.shape, scores_shape)).reshape(-1, n_q, n_kv)
    except ValueError:
        return f"mask shape {values.shape} does not broadcast to the scores {scores_shape}"
    if n_kv < n_q:
        return f"{n_q} queries but only {n_kv} keys"
    rows = np.arange(n_q)[:, None]
    cols = np.arange(n_kv)[None, :]
    visible = cols <= n_kv - n_q + rows
    for plane in planes:
        if not (np.all(plane[visible] == 0.0) and np.all(plane[~visible] <= MASKED_AT_MOST)):
            return f"probe with scores {scores_shape} gives {plane.tolist()}"
    return None


def _attribute(node: NodeProto, name: str, default):
    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return default


def _unique(nodes: list[NodeProto]) -> list[NodeProto]:
    seen: set[int] = set()
    unique = []
    for node in nodes:
        if id(node) not in seen:
            seen.add(id(node))
            unique.append(node)
    return unique
