"""The contract of the fused ``xdna`` nodes: op types, inputs, attributes, and how to build them.

The graph passes write these nodes and ``ep/ops.py`` declares the custom ops from the same tables, so
the two never disagree. The facts of onnxruntime-extensions Python ops (design.md) shape the contract:
fixed arity, float32 tensors only, every declared attribute present on every node, floats as exact
strings (float attributes are cut to 6 significant digits on their way to Python).

``xdna::MatMul``    (x) -> y          y = act(x @ W + b); W and b are constants referred to by key
``xdna::Attention`` (q, k, v) -> out  softmax(q @ k^T * scale [+ causal mask]) @ v, per head
``xdna::Softmax``   (x) -> y          softmax along ``axis`` (opset >= 13 semantics)

Common attributes: ``model_key`` names the compiled model in the process-wide registry (its executor
and weights; empty until ``xdna_ep.compile`` binds it) and ``node`` names the node for statistics.
"""

from __future__ import annotations

from onnx import NodeProto, helper

DOMAIN = "xdna"
OPSET_VERSION = 1

MATMUL = "MatMul"
ATTENTION = "Attention"
SOFTMAX = "Softmax"
OP_TYPES = (MATMUL, ATTENTION, SOFTMAX)

# Activations xdna::MatMul applies after the bias: "" none, "gelu" erf GELU (Whisper's).
ACTIVATIONS = ("", "gelu")

# Attention kinds: encoder self-attention, decoder self-attention (causal), cross-attention.
ATTENTION_KINDS = ("self", "causal_self", "cross")

# Attribute name -> Python type, per op type. Every node carries all of them.
ATTRIBUTES: dict[str, dict[str, type]] = {
    MATMUL: {
        "model_key": str,
        "node": str,
        "weight_key": str,  # initializer name of W (k, n) in the compiled model
        "bias_key": str,  # initializer name of b (n,), "" for none
        "activation": str,
        "k": int,  # rows of W (checked against x on every call)
        "n": int,  # columns of W: the output width
    },
    ATTENTION: {
        "model_key": str,
        "node": str,
        "scale": str,  # repr() of the float scale: exact, unlike float attributes
        "causal": int,  # 1: query i of n_q sees keys 0 .. n_kv - n_q + i
        "kind": str,  # one of ATTENTION_KINDS (statistics and inspect)
    },
    SOFTMAX: {
        "model_key": str,
        "node": str,
        "axis": int,
    },
}
N_INPUTS = {MATMUL: 1, ATTENTION: 3, SOFTMAX: 1}


def make_matmul(
    x: str, y: str, name: str, *, weight_key: str, bias_key: str, activation: str, k: int, n: int
) -> NodeProto:
    """xdna::MatMul node: y = act(x @ W + b), x (..., k) -> y (..., n)."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}: valid are {ACTIVATIONS}")
    return helper.make_node(
        MATMUL, [x], [y], name=name, domain=DOMAIN,
        model_key="", node=name, weight_key=weight_key, bias_key=bias_key, activation=activation, k=k, n=n,
    )  # fmt: skip


def make_attention(q: str, k: str, v: str, out: str, name: str, *, scale: float, causal: bool, kind: str) -> NodeProto:
    """xdna::Attention node: q (b, h, n_q, d), k and v (b, h, n_kv, d) -> out (b, h, n_q, d)."""
    if kind not in ATTENTION_KINDS:
        raise ValueError(f"unknown attention kind {kind!r}: valid are {ATTENTION_KINDS}")
    return helper.make_node(
        ATTENTION, [q, k, v], [out], name=name, domain=DOMAIN,
        model_key="", node=name, scale=repr(float(scale)), causal=int(causal), kind=kind,
    )  # fmt: skip


def make_softmax(x: str, y: str, name: str, *, axis: int) -> NodeProto:
    """xdna::Softmax node along ``axis``."""
    return helper.make_node(SOFTMAX, [x], [y], name=name, domain=DOMAIN, model_key="", node=name, axis=axis)


def is_xdna(node: NodeProto) -> bool:
    return node.domain == DOMAIN and node.op_type in OP_TYPES


def attributes(node: NodeProto) -> dict[str, object]:
    """The attributes of an xdna node as Python values (str, int)."""
    values = {}
    for attribute in node.attribute:
        value = helper.get_attribute_value(attribute)
        values[attribute.name] = value.decode() if isinstance(value, bytes) else value
    return values


def set_string_attribute(node: NodeProto, name: str, value: str) -> None:
    """Overwrite string attribute ``name`` of ``node`` in place."""
    for attribute in node.attribute:
        if attribute.name == name:
            attribute.s = value.encode()
            return
    raise KeyError(f"node {node.name} has no attribute {name!r}")
