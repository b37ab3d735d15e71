"""Whisper weights (NumPy) -> the three Whisper ONNX graphs, written directly with ``onnx.helper``; no PyTorch.

    weights named as transformers names them (``model.encoder.layers.0.fc1.weight``, ...)
      -> encoder_model.onnx             input_features (batch, n_mels, 3000) -> last_hidden_state
      -> decoder_model.onnx             input_ids + encoder_hidden_states -> logits, present.*
      -> decoder_with_past_model.onnx   input_ids + past_key_values.* -> logits, present.*.decoder.*
      -> decoder_weights.bin            every decoder weight, once, read by both decoder graphs

The graphs keep optimum's input/output names and dynamic-axis names, and its op pattern: linear layers
are ``MatMul(x, W^T) + b`` with erf GELU, attention is ``Softmax(Q*scale @ K^T + causal mask) @ V`` over
(batch, n_head, n, head_dim) tensors, and the self-attention cache concatenates past and new keys. So
the fusions of ``graph_passes`` find the same nodes in these graphs as in optimum's.

One copy of every weight: the encoder's weights live in ``encoder_model.onnx``; the decoder's in one
external-data file that both decoder graphs point into (same names, same offsets). The tied token
embedding is stored once, transposed (d, n_vocab): the output projection multiplies by it and the
embedding gathers its columns.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from xdna_ep.errors import ModelError
from xdna_ep.models.convert import WhisperDims

ONNX_OPSET = 18  # the opset optimum writes for Whisper; ONNX Runtime 1.31 loads opset <= 26
IR_VERSION = 10  # ONNX Runtime 1.31 loads IR <= 13; onnx.helper would stamp 14
LAYER_NORM_EPS = 1e-5
DECODER_WEIGHTS_FILE = "decoder_weights.bin"
LOGITS_POSITIONS = "logits_positions"  # optional input of decoder_model: the positions whose logits are computed
_ALIGNMENT = 4096  # tensors start on page boundaries in the external-data file (mmap-friendly)
_MASKED = float(np.finfo(np.float32).min)  # additive causal mask of a hidden key, as transformers writes it

# optimum's dynamic-axis names; graph_passes' mask probe sets these by name
BATCH, N_NEW, N_PAST, N_AUDIO = "batch_size", "decoder_sequence_length", "past_decoder_sequence_length", "encoder_sequence_length"


class _Graph:
    """Nodes and initializers of one graph, with unique output names."""

    def __init__(self, weights: dict[str, np.ndarray]) -> None:
        self.weights = weights
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: dict[str, np.ndarray] = {}
        self.names: dict[str, int] = {}

    def op(self, op_type: str, inputs: list[str], hint: str, **attrs) -> str:
        """Append one node; return its output name, ``hint`` made unique."""
        count = self.names.get(hint, 0)
        self.names[hint] = count + 1
        name = hint if count == 0 else f"{hint}_{count}"
        self.nodes.append(helper.make_node(op_type, inputs, [name], name=f"/{name}", **attrs))
        return name

    def weight(self, name: str, transpose: bool = False) -> str:
        """The initializer of weight ``name`` (``W^T`` for a linear layer's MatMul when ``transpose``)."""
        key = f"{name}_transposed" if transpose else name
        if key not in self.initializers:
            if name not in self.weights:
                raise ModelError(f"the weights lack '{name}'")
            array = self.weights[name]
            self.initializers[key] = np.ascontiguousarray(array.T) if transpose else array
        return key

    def constant(self, value, dtype, hint: str) -> str:
        array = np.asarray(value, dtype=dtype)
        return self.op("Constant", [], hint, value=numpy_helper.from_array(array, hint))

    # layers, written as transformers' Whisper computes them

    def linear(self, x: str, prefix: str, bias: bool = True) -> str:
        y = self.op("MatMul", [x, self.weight(f"{prefix}.weight", transpose=True)], f"{prefix}/MatMul")
        return self.op("Add", [self.weight(f"{prefix}.bias"), y], f"{prefix}/Add") if bias else y

    def gelu(self, x: str, hint: str) -> str:
        """0.5 * x * (1 + erf(x / sqrt(2))), the erf form transformers' ``gelu`` exports to."""
        scaled = self.op("Div", [x, self.constant(math.sqrt(2.0), np.float32, f"{hint}/sqrt2")], f"{hint}/Div")
        erf = self.op("Erf", [scaled], f"{hint}/Erf")
        one_plus = self.op("Add", [erf, self.constant(1.0, np.float32, f"{hint}/one")], f"{hint}/Add")
        product = self.op("Mul", [x, one_plus], f"{hint}/Mul")
        return self.op("Mul", [product, self.constant(0.5, np.float32, f"{hint}/half")], f"{hint}/Mul_half")

    def layer_norm(self, x: str, prefix: str) -> str:
        inputs = [x, self.weight(f"{prefix}.weight"), self.weight(f"{prefix}.bias")]
        return self.op("LayerNormalization", inputs, f"{prefix}/LayerNormalization", axis=-1, epsilon=LAYER_NORM_EPS)

    def heads(self, x: str, n_head: int, head_dim: int, hint: str, output: str | None = None) -> str:
        """(batch, n, n_head * head_dim) -> (batch, n_head, n, head_dim), named ``output`` when given."""
        shape = self.constant([0, -1, n_head, head_dim], np.int64, f"{hint}/shape")
        reshaped = self.op("Reshape", [x, shape], f"{hint}/Reshape")  # (batch, n, n_head, head_dim)
        return self.op("Transpose", [reshaped], output or f"{hint}/Transpose", perm=[0, 2, 1, 3])

    def merge_heads(self, x: str, width: int, hint: str) -> str:
        """(batch, n_head, n, head_dim) -> (batch, n, n_head * head_dim)"""
        transposed = self.op("Transpose", [x], f"{hint}/Transpose", perm=[0, 2, 1, 3])
        shape = self.constant([0, -1, width], np.int64, f"{hint}/shape")
        return self.op("Reshape", [transposed, shape], f"{hint}/Reshape")

    def attention(self, q: str, k: str, v: str, mask: str | None, hint: str) -> str:
        """Softmax(Q @ K^T [+ mask]) @ V on (batch, n_head, n, head_dim); Q carries the scale already."""
        k_t = self.op("Transpose", [k], f"{hint}/Transpose_k", perm=[0, 1, 3, 2])
        scores = self.op("MatMul", [q, k_t], f"{hint}/MatMul_qk")  # (batch, n_head, n_q, n_kv)
        if mask is not None:
            scores = self.op("Add", [scores, mask], f"{hint}/Add_mask")
        probs = self.op("Softmax", [scores], f"{hint}/Softmax", axis=-1)
        return self.op("MatMul", [probs, v], f"{hint}/MatMul_pv")  # (batch, n_head, n_q, head_dim)

    def query(self, x: str, prefix: str, n_head: int, head_dim: int) -> str:
        """q_proj(x) * head_dim^-0.5 split into heads (transformers scales Q before the split)."""
        q = self.linear(x, f"{prefix}.q_proj")
        scale = self.constant(head_dim**-0.5, np.float32, f"{prefix}/scale")
        return self.heads(self.op("Mul", [q, scale], f"{prefix}/Mul_scale"), n_head, head_dim, f"{prefix}/q")

    def model(self, inputs, outputs, name: str) -> onnx.ModelProto:
        initializers = [numpy_helper.from_array(np.asarray(a, dtype=a.dtype), n) for n, a in self.initializers.items()]
        graph = helper.make_graph(self.nodes, name, inputs, outputs, initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)], producer_name="xdna-ep")
        model.ir_version = IR_VERSION
        return model


def _tensor(name: str, elem_type: int, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem_type, shape)


def build_encoder(weights: dict[str, np.ndarray], dims: WhisperDims) -> onnx.ModelProto:
    """input_features (batch, n_mels, 2 * n_audio_ctx) -> last_hidden_state (batch, n_audio_ctx, d)."""
    g = _Graph(weights)
    d, n_head = dims.n_audio_state, dims.n_audio_head
    head_dim = d // n_head
    x = "input_features"
    for index, stride in ((1, 1), (2, 2)):
        prefix = f"model.encoder.conv{index}"
        conv_inputs = [x, g.weight(f"{prefix}.weight"), g.weight(f"{prefix}.bias")]
        conv = g.op("Conv", conv_inputs, f"{prefix}/Conv", kernel_shape=[3], pads=[1, 1], strides=[stride])
        x = g.gelu(conv, f"{prefix}/gelu")
    x = g.op("Transpose", [x], "model.encoder/Transpose", perm=[0, 2, 1])  # (batch, n_audio_ctx, d)
    x = g.op("Add", [x, g.weight("model.encoder.embed_positions.weight")], "model.encoder/Add_positions")
    for i in range(dims.n_audio_layer):
        prefix = f"model.encoder.layers.{i}"
        attn = f"{prefix}.self_attn"
        h = g.layer_norm(x, f"{prefix}.self_attn_layer_norm")
        q = g.query(h, attn, n_head, head_dim)
        k = g.heads(g.linear(h, f"{attn}.k_proj", bias=False), n_head, head_dim, f"{attn}/k")
        v = g.heads(g.linear(h, f"{attn}.v_proj"), n_head, head_dim, f"{attn}/v")
        o = g.merge_heads(g.attention(q, k, v, None, attn), d, f"{attn}/o")
        x = g.op("Add", [x, g.linear(o, f"{attn}.out_proj")], f"{prefix}/Add_attention")
        x = g.op("Add", [x, _feed_forward(g, x, prefix)], f"{prefix}/Add_ffn")
    g.op("LayerNormalization", [x, g.weight("model.encoder.layer_norm.weight"), g.weight("model.encoder.layer_norm.bias")],
         "last_hidden_state", axis=-1, epsilon=LAYER_NORM_EPS)
    inputs = [_tensor("input_features", TensorProto.FLOAT, [BATCH, dims.n_mels, 2 * dims.n_audio_ctx])]
    outputs = [_tensor("last_hidden_state", TensorProto.FLOAT, [BATCH, dims.n_audio_ctx, d])]
    return g.model(inputs, outputs, "whisper_encoder")


def _feed_forward(g: _Graph, x: str, prefix: str) -> str:
    h = g.layer_norm(x, f"{prefix}.final_layer_norm")
    return g.linear(g.gelu(g.linear(h, f"{prefix}.fc1"), f"{prefix}.fc1/gelu"), f"{prefix}.fc2")


def build_decoder(weights: dict[str, np.ndarray], dims: WhisperDims, with_past: bool) -> onnx.ModelProto:
    """The decoder: prompt + encoder states (``with_past`` False) or new tokens + the cache (True).

    Without past: input_ids (batch, n), encoder_hidden_states (batch, n_audio_ctx, d) -> logits
    (batch, n, n_vocab), present.{i}.decoder|encoder.key|value (batch, n_head, n | n_audio_ctx, head_dim).
    With past: input_ids + past_key_values.{i}.decoder|encoder.key|value -> logits and the self-attention
    ``present.{i}.decoder.*`` (past concatenated with the new positions); the cross-attention cache is
    an input only.
    """
    g = _Graph(weights)
    d, n_head, layers = dims.n_text_state, dims.n_text_head, dims.n_text_layer
    head_dim = d // n_head
    inputs = [_tensor("input_ids", TensorProto.INT64, [BATCH, N_NEW])]
    outputs = [_tensor("logits", TensorProto.FLOAT, [BATCH, N_NEW, dims.n_vocab])]
    if with_past:
        for i in range(layers):
            for part, length in (("decoder", N_PAST), ("encoder", N_AUDIO)):
                for kv in ("key", "value"):
                    inputs.append(_tensor(f"past_key_values.{i}.{part}.{kv}", TensorProto.FLOAT, [BATCH, n_head, length, head_dim]))
    else:
        inputs.append(_tensor("encoder_hidden_states", TensorProto.FLOAT, [BATCH, N_AUDIO, d]))

    # positions: n_past .. n_past + n_new - 1
    n_new = g.op("Gather", [g.op("Shape", ["input_ids"], "n_new/Shape"), g.constant([1], np.int64, "n_new/axis")], "n_new")
    if with_past:
        past_shape = g.op("Shape", ["past_key_values.0.decoder.key"], "n_past/Shape")
        n_past = g.op("Gather", [past_shape, g.constant([2], np.int64, "n_past/axis")], "n_past")
    else:
        n_past = g.constant([0], np.int64, "n_past")
    n_total = g.op("Add", [n_past, n_new], "n_total")  # (1,)
    positions = g.op("Slice", [g.weight("model.decoder.embed_positions.weight"), n_past, n_total,
                               g.constant([0], np.int64, "positions/axes")], "positions")  # (n_new, d)
    mask = _causal_mask(g, n_past, n_new, n_total)

    # the tied embedding, stored once as (d, n_vocab): gather columns, then (d, batch, n) -> (batch, n, d)
    embedding_t = g.weight("model.decoder.embed_tokens.weight", transpose=True)
    embedded = g.op("Gather", [embedding_t, "input_ids"], "embed_tokens/Gather", axis=1)
    embedded = g.op("Transpose", [embedded], "embed_tokens/Transpose", perm=[1, 2, 0])
    x = g.op("Add", [embedded, positions], "model.decoder/Add_positions")
    for i in range(layers):
        prefix = f"model.decoder.layers.{i}"
        attn, cross = f"{prefix}.self_attn", f"{prefix}.encoder_attn"
        h = g.layer_norm(x, f"{prefix}.self_attn_layer_norm")
        q = g.query(h, attn, n_head, head_dim)
        present_k, present_v = f"present.{i}.decoder.key", f"present.{i}.decoder.value"
        k_proj, v_proj = g.linear(h, f"{attn}.k_proj", bias=False), g.linear(h, f"{attn}.v_proj")
        if with_past:  # the cache concatenates past and new positions
            k = g.op("Concat", [f"past_key_values.{i}.decoder.key", g.heads(k_proj, n_head, head_dim, f"{attn}/k")], present_k, axis=2)
            v = g.op("Concat", [f"past_key_values.{i}.decoder.value", g.heads(v_proj, n_head, head_dim, f"{attn}/v")], present_v, axis=2)
        else:
            k = g.heads(k_proj, n_head, head_dim, f"{attn}/k", output=present_k)
            v = g.heads(v_proj, n_head, head_dim, f"{attn}/v", output=present_v)
        o = g.merge_heads(g.attention(q, k, v, mask, attn), d, f"{attn}/o")
        x = g.op("Add", [x, g.linear(o, f"{attn}.out_proj")], f"{prefix}/Add_attention")

        h = g.layer_norm(x, f"{prefix}.encoder_attn_layer_norm")
        q = g.query(h, cross, n_head, head_dim)
        if with_past:
            k, v = f"past_key_values.{i}.encoder.key", f"past_key_values.{i}.encoder.value"
        else:
            states = "encoder_hidden_states"
            k_proj, v_proj = g.linear(states, f"{cross}.k_proj", bias=False), g.linear(states, f"{cross}.v_proj")
            k = g.heads(k_proj, n_head, head_dim, f"{cross}/k", output=f"present.{i}.encoder.key")
            v = g.heads(v_proj, n_head, head_dim, f"{cross}/v", output=f"present.{i}.encoder.value")
        o = g.merge_heads(g.attention(q, k, v, None, cross), d, f"{cross}/o")
        x = g.op("Add", [x, g.linear(o, f"{cross}.out_proj")], f"{prefix}/Add_cross_attention")
        x = g.op("Add", [x, _feed_forward(g, x, prefix)], f"{prefix}/Add_ffn")
    h = g.layer_norm(x, "model.decoder.layer_norm")
    if not with_past:  # the prompt step: logits only at the positions the caller reads
        h = g.op("Gather", [h, _logits_positions(g, n_new, inputs)], "logits_positions/Gather", axis=1)
    g.op("MatMul", [h, embedding_t], "logits")  # (batch, n_read, n_vocab)

    for i in range(layers):
        parts = ("decoder",) if with_past else ("decoder", "encoder")
        for part in parts:
            length = N_AUDIO if part == "encoder" else ("present_sequence_length" if with_past else N_NEW)
            for kv in ("key", "value"):
                outputs.append(_tensor(f"present.{i}.{part}.{kv}", TensorProto.FLOAT, [BATCH, n_head, length, head_dim]))
    name = "whisper_decoder_with_past" if with_past else "whisper_decoder"
    return g.model(inputs, outputs, name)


def _logits_positions(g: _Graph, n_new: str, inputs: list) -> str:
    """The positions to compute logits at: input ``logits_positions`` (n_read,) int64, negative ones
    counting from the end; when it is not fed (its default is empty), every position 0 .. n_new - 1.

    An overridable initializer (a graph input with a default), so callers that do not know it feed
    nothing and get optimum's full logits.
    """
    g.initializers[LOGITS_POSITIONS] = np.zeros((0,), dtype=np.int64)
    inputs.append(_tensor(LOGITS_POSITIONS, TensorProto.INT64, ["n_logits"]))
    none_given = g.op("Equal", [g.op("Size", [LOGITS_POSITIONS], "logits_positions/Size"),
                                g.constant(0, np.int64, "logits_positions/zero")], "logits_positions/none_given")
    n_all = g.op("Mul", [g.op("Squeeze", [n_new, g.constant([0], np.int64, "logits_positions/axes")], "logits_positions/n_new"),
                         g.op("Cast", [none_given], "logits_positions/Cast", to=TensorProto.INT64)], "logits_positions/n_all")
    every = g.op("Range", [g.constant(0, np.int64, "logits_positions/start"), n_all,
                           g.constant(1, np.int64, "logits_positions/step")], "logits_positions/every")
    return g.op("Concat", [LOGITS_POSITIONS, every], "logits_positions/read", axis=0)  # (n_read,)


def _causal_mask(g: _Graph, n_past: str, n_new: str, n_total: str) -> str:
    """(n_new, n_total) additive mask: 0 where key j <= n_past + query i, float32 min elsewhere."""
    zero, one = g.constant(0, np.int64, "mask/zero"), g.constant(1, np.int64, "mask/one")
    scalar_axes = g.constant([0], np.int64, "mask/axes")
    new = g.op("Squeeze", [n_new, scalar_axes], "mask/n_new")
    total = g.op("Squeeze", [n_total, scalar_axes], "mask/n_total")
    rows = g.op("Add", [g.op("Range", [zero, new, one], "mask/Range_rows"), n_past], "mask/rows")  # (n_new,)
    rows = g.op("Unsqueeze", [rows, g.constant([1], np.int64, "mask/col_axis")], "mask/rows_column")  # (n_new, 1)
    cols = g.op("Range", [zero, total, one], "mask/Range_cols")  # (n_total,)
    visible = g.op("LessOrEqual", [cols, rows], "mask/visible")  # (n_new, n_total)
    hidden_value = g.constant(_MASKED, np.float32, "mask/hidden")
    return g.op("Where", [visible, g.constant(0.0, np.float32, "mask/shown"), hidden_value], "mask")


def write_models(weights: dict[str, np.ndarray], dims: WhisperDims, folder: Path) -> None:
    """Write the encoder (weights inline) and both decoders over one ``decoder_weights.bin``."""
    folder = Path(folder)
    onnx.save(build_encoder(weights, dims), str(folder / "encoder_model.onnx"))
    decoders = {
        "decoder_model.onnx": build_decoder(weights, dims, with_past=False),
        "decoder_with_past_model.onnx": build_decoder(weights, dims, with_past=True),
    }
    save_sharing_weights(decoders, folder)


def save_sharing_weights(models: dict[str, onnx.ModelProto], folder: Path) -> None:
    """Save ``models`` (file name -> model) with every initializer in ``decoder_weights.bin``, each
    distinct tensor (same type, shape and bytes) stored once and pointed to by every model that uses it."""
    locations: dict[tuple, tuple[int, int]] = {}
    with open(folder / DECODER_WEIGHTS_FILE, "wb") as data:
        for model in models.values():
            graph_inputs = {value.name for value in model.graph.input}
            for tensor in model.graph.initializer:
                if tensor.name in graph_inputs:  # the default of an optional input, not a weight
                    continue
                tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor), tensor.name))  # as raw_data
                key = (tensor.data_type, tuple(tensor.dims), hashlib.sha256(tensor.raw_data).digest())
                if key not in locations:
                    offset = data.tell() + (-data.tell() % _ALIGNMENT)
                    data.seek(offset)
                    data.write(tensor.raw_data)
                    locations[key] = (offset, len(tensor.raw_data))
                onnx.external_data_helper.set_external_data(tensor, DECODER_WEIGHTS_FILE, *locations[key])
                tensor.ClearField("raw_data")
    for file, model in models.items():
        onnx.save(model, str(folder / file))
