"""The Whisper ONNX variants users bring, built from the real exports with ONNX Runtime's own tools:
its transformer optimizer (bart and bert fusions; bart with MultiHeadAttention), its basic / extended
graph optimizations saved to disk, its fp16 converter (keep_io_types True and False), and the export
with every input and dimension renamed. Also the export as ``torch.onnx.export(opset_version=11)``
writes it (``opset11``; ``opset11_default_axis`` with the Softmax axis left to opset 11's default),
and the model rewritten to multi-query (``mqa``: K and V of one head) and grouped-query attention
(``gqa``: 2 K/V heads, repeated to Q's). Also built from the same weights by torch's dynamo exporter (``torch.onnx.export(...,
dynamo=True)``, through onnxscript) at opset 18 (SDPA decomposed into MatMul, Softmax, MatMul, K^T
through a 3-D Transpose, erf GELU) and at opset 23 (SDPA as ONNX's ``Attention`` op, the decoder's
causal mask as its boolean ``attn_mask``, ``Gelu``). Used by ``test_variants.py``."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

SESSIONS = ("encoder_model", "decoder_model", "decoder_with_past_model")
VARIANTS = (
    "optimum", "bart", "bart_mha", "bert", "ort_basic", "ort_extended", "fp16_keep_io", "fp16", "renamed",
    "opset11", "opset11_default_axis", "mqa", "gqa", "dynamo18", "dynamo23",
)  # fmt: skip
GQA_KV_HEADS = 2  # K/V heads of the gqa variant (tiny.en's 6 and base's 8 query heads split into 2 groups)
DYNAMO_OPSETS = {"dynamo18": 18, "dynamo23": 23}  # 23: the first opset with ONNX's Attention op


def build_variant(source: Path, variant: str, out: Path, *, n_head: int, d_model: int) -> Path:
    """Write ``variant`` of the ONNX file ``source`` to ``out`` (returns ``out``)."""
    if variant == "optimum":
        return source
    if variant in DYNAMO_OPSETS:
        return dynamo_export(source.parent, source.stem, DYNAMO_OPSETS[variant], out)
    if variant in ("bart", "bart_mha", "bert"):
        import contextlib

        from onnxruntime.transformers.fusion_options import FusionOptions
        from onnxruntime.transformers.optimizer import optimize_model

        model_type = variant.removesuffix("_mha")
        options = FusionOptions(model_type)
        # --use_multi_head_attention: the decoder's attention with past becomes contrib MultiHeadAttention
        options.use_multi_head_attention = variant == "bart_mha"
        with contextlib.chdir(out.parent):  # its shape inference leaves temporary files in the working directory
            optimized = optimize_model(
                str(source), model_type=model_type, num_heads=n_head, hidden_size=d_model, optimization_options=options
            )
            optimized.save_model_to_file(str(out))
    elif variant in ("ort_basic", "ort_extended"):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = (
            ort.GraphOptimizationLevel.ORT_ENABLE_BASIC if variant == "ort_basic" else ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        )
        options.optimized_model_filepath = str(out)
        options.log_severity_level = 3
        # from bytes with the weights inline: a saved optimized model would otherwise point at the
        # source's external data file by a path relative to the folder it is saved in
        ort.InferenceSession(onnx.load(str(source)).SerializeToString(), options, providers=["CPUExecutionProvider"])
    elif variant in ("fp16", "fp16_keep_io"):
        from onnxruntime.transformers.float16 import convert_float_to_float16

        onnx.save(convert_float_to_float16(onnx.load(str(source)), keep_io_types=variant == "fp16_keep_io"), str(out))
    elif variant == "renamed":
        onnx.save(renamed(onnx.load(str(source))), str(out))
    elif variant in ("opset11", "opset11_default_axis"):
        onnx.save(opset_11(onnx.load(str(source)), softmax_axis=variant == "opset11"), str(out))
    elif variant in ("mqa", "gqa"):
        onnx.save(grouped_kv(onnx.load(str(source)), n_head, 1 if variant == "mqa" else GQA_KV_HEADS), str(out))
    else:
        raise ValueError(f"unknown variant {variant!r}: valid are {', '.join(VARIANTS)}")
    return out


def renamed(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with every graph input and every symbolic dimension renamed (nothing of optimum's names)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    names = {inp.name: f"in{index}" for index, inp in enumerate(model.graph.input)}
    dims: dict[str, str] = {}
    for value_info in [*model.graph.input, *model.graph.output]:
        value_info.name = names.get(value_info.name, value_info.name)
        for dim in value_info.type.tensor_type.shape.dim:
            if dim.dim_param:
                dim.dim_param = dims.setdefault(dim.dim_param, f"d{len(dims)}")
    for node in model.graph.node:
        for index, name in enumerate(node.input):
            if name in names:
                node.input[index] = names[name]
    return model


def opset_11(model: onnx.ModelProto, *, softmax_axis: bool = True) -> onnx.ModelProto:
    """The model at opset 11, written as ``torch.onnx.export(opset_version=11)`` writes these ops.

    - LayerNormalization (opset 17) -> ReduceMean, Sub, Pow 2, ReduceMean, Add eps, Sqrt, Div, Mul, Add
      (torch's ``layer_norm`` before opset 17);
    - LessOrEqual (opset 12) -> Not(Greater) (torch's ``le`` before opset 12);
    - Squeeze / Unsqueeze with an axes input (opset 13) -> the axes attribute;
    - Softmax(axis=-1) -> Softmax(axis=3): torch writes the positive axis of the 4-D scores (measured
      with torch 2.13, dynamo=False: a 3-D bmm form gets axis=2). ``softmax_axis=False`` drops the
      attribute, so that opset 11's default axis 1 flattens (b, h, n_q, n_kv) into (b, h * n_q * n_kv):
      a different model, which no exporter writes for attention, and which the passes must refuse.
    """
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    constants = {node.output[0]: numpy_helper.to_array(node.attribute[0].t) for node in graph.node if node.op_type == "Constant"}
    constants.update({init.name: numpy_helper.to_array(init) for init in graph.initializer if init.data_type == onnx.TensorProto.INT64})
    nodes: list[onnx.NodeProto] = []

    def add(op_type: str, inputs: list[str], output: str, **attrs) -> str:
        nodes.append(helper.make_node(op_type, inputs, [output], name=output, **attrs))
        return output

    for node in graph.node:
        prefix = node.name or node.output[0]
        if node.op_type == "LayerNormalization":
            x, weight, bias = node.input
            epsilon = next(a.f for a in node.attribute if a.name == "epsilon")
            two = add("Constant", [], f"{prefix}/two", value=numpy_helper.from_array(np.array(2.0, np.float32)))
            eps = add("Constant", [], f"{prefix}/epsilon", value=numpy_helper.from_array(np.array(epsilon, np.float32)))
            mean = add("ReduceMean", [x], f"{prefix}/ReduceMean", axes=[-1], keepdims=1)
            centred = add("Sub", [x, mean], f"{prefix}/Sub")
            variance = add("ReduceMean", [add("Pow", [centred, two], f"{prefix}/Pow")], f"{prefix}/ReduceMean_1", axes=[-1], keepdims=1)
            std = add("Sqrt", [add("Add", [variance, eps], f"{prefix}/Add")], f"{prefix}/Sqrt")
            scaled = add("Mul", [add("Div", [centred, std], f"{prefix}/Div"), weight], f"{prefix}/Mul")
            nodes.append(helper.make_node("Add", [scaled, bias], [node.output[0]], name=f"{prefix}/Add_1"))
        elif node.op_type == "LessOrEqual":
            greater = add("Greater", list(node.input), f"{prefix}/Greater")
            nodes.append(helper.make_node("Not", [greater], list(node.output), name=f"{prefix}/Not"))
        elif node.op_type in ("Squeeze", "Unsqueeze") and len(node.input) == 2:
            axes = [int(a) for a in np.atleast_1d(constants[node.input[1]])]
            nodes.append(helper.make_node(node.op_type, [node.input[0]], list(node.output), name=node.name, axes=axes))
        elif node.op_type == "Softmax":
            attrs = {"axis": 3} if softmax_axis else {}
            nodes.append(helper.make_node("Softmax", list(node.input), list(node.output), name=node.name, **attrs))
        else:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    del model.opset_import[:]
    model.opset_import.append(helper.make_opsetid("", 11))
    model.ir_version = 6  # what torch writes at opset 11
    return model


def grouped_kv(model: onnx.ModelProto, n_head: int, kv_heads: int) -> onnx.ModelProto:
    """Every attention rewritten to ``kv_heads`` K/V heads: a different model than Whisper.

    The K and V projections keep the first ``kv_heads`` heads' weights (and bias); the heads reshape
    makes (b, n, kv_heads, d). One K/V head (multi-query) is left for MatMul to broadcast over Q's
    heads; more are repeated to Q's heads as transformers' ``repeat_kv`` writes it (Unsqueeze,
    Expand, Reshape), after the cache: ``present.*`` and ``past_key_values.*`` hold ``kv_heads`` heads.
    """
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    initializers = {init.name: init for init in graph.initializer}
    value_infos = {info.name: info for info in [*graph.input, *graph.output]}
    head_dims: dict[str, int] = {}  # narrowed tensor -> its head size
    new_nodes: dict[str, list[onnx.NodeProto]] = {}  # inserted after the node producing the key

    def narrow_initializer(name: str, columns: int) -> None:
        array = numpy_helper.to_array(initializers[name])
        initializers[name].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(array[..., :columns]), name))

    def narrow(tensor: str) -> int:
        """Make ``tensor`` (b, n_head, n, d) one of (b, kv_heads, n, d), back to the projection or input."""
        if tensor in head_dims:
            return head_dims[tensor]
        if tensor in value_infos:  # a past input or a present output
            value_infos[tensor].type.tensor_type.shape.dim[1].dim_value = kv_heads
        node = producer.get(tensor)
        if node is None:
            head_dims[tensor] = value_infos[tensor].type.tensor_type.shape.dim[3].dim_value
            return head_dims[tensor]
        if node.op_type == "Concat":  # past + new
            head_dims[tensor] = [narrow(name) for name in node.input][-1]
            return head_dims[tensor]
        reshape = producer[node.input[0]]  # Transpose(Reshape(projection, (0, -1, n_head, d)))
        assert node.op_type == "Transpose" and reshape.op_type == "Reshape", (node.op_type, reshape.op_type)
        head_dim = int(numpy_helper.to_array(producer[reshape.input[1]].attribute[0].t)[-1])
        shape = f"{reshape.name}/kv_heads"
        new_nodes.setdefault(reshape.input[0], []).append(
            helper.make_node("Constant", [], [shape], name=shape, value=numpy_helper.from_array(np.array([0, -1, kv_heads, head_dim], np.int64)))
        )
        reshape.input[1] = shape
        projection = producer[reshape.input[0]]
        if projection.op_type == "Add":  # + bias
            bias = next(name for name in projection.input if name in initializers)
            narrow_initializer(bias, kv_heads * head_dim)
            projection = producer[next(name for name in projection.input if name not in initializers)]
        narrow_initializer(projection.input[1], kv_heads * head_dim)
        head_dims[tensor] = head_dim
        return head_dim

    def repeated(tensor: str, head_dim: int) -> str:
        """(b, kv_heads, n, d) -> (b, n_head, n, d), each K/V head used by n_head / kv_heads query heads."""
        out = f"{tensor}/repeat_kv"
        if out in producer:
            return out
        constant = lambda name, value: helper.make_node("Constant", [], [name], name=name, value=numpy_helper.from_array(np.array(value, np.int64)))  # noqa: E731
        nodes = [
            constant(f"{out}/axes", [2]),
            helper.make_node("Unsqueeze", [tensor, f"{out}/axes"], [f"{out}/unsqueezed"], name=f"{out}/Unsqueeze"),
            constant(f"{out}/groups", [1, 1, n_head // kv_heads, 1, 1]),
            helper.make_node("Expand", [f"{out}/unsqueezed", f"{out}/groups"], [f"{out}/expanded"], name=f"{out}/Expand"),
            constant(f"{out}/shape", [0, n_head, -1, head_dim]),
            helper.make_node("Reshape", [f"{out}/expanded", f"{out}/shape"], [out], name=out),
        ]
        producer[out] = nodes[-1]
        new_nodes.setdefault(tensor, []).extend(nodes)
        return out

    for softmax in [node for node in graph.node if node.op_type == "Softmax"]:
        probs_matmul = next(node for node in graph.node if softmax.output[0] in node.input)
        scores = producer[softmax.input[0]]
        while scores.op_type != "MatMul":  # through the mask Add
            scores = producer[scores.input[0]]
        k_transpose = producer[scores.input[1]]  # K^T = Transpose(K, (0, 1, 3, 2))
        for consumer, index in ((k_transpose, 0), (probs_matmul, 1)):
            narrow(consumer.input[index])
            if kv_heads > 1:
                consumer.input[index] = repeated(consumer.input[index], head_dims[consumer.input[index]])
    ordered = []
    for name in [info.name for info in graph.input]:
        ordered.extend(new_nodes.pop(name, []))
    for node in graph.node:
        ordered.append(node)
        ordered.extend(n for out in node.output for n in new_nodes.pop(out, []))  # right after what they read
    assert not new_nodes, sorted(new_nodes)
    del graph.node[:]
    graph.node.extend(ordered)
    return model


@functools.lru_cache(maxsize=1)
def _torch_whisper(folder: Path):
    """(``WhisperForConditionalGeneration`` in fp32 eval mode, dimensions) from the weights the model
    folder was exported from (its packaged weights), built as ``models/export_optimum.py`` builds it."""
    from xdna_ep.models.export import load_weights, locate_weights
    from xdna_ep.models.export_optimum import torch_model

    name = json.loads((folder / "whisper_config.json").read_text())["name"]
    weights, dims, extra = load_weights(locate_weights(name))
    return torch_model(weights, dims, extra), dims


def dynamo_export(folder: Path, session: str, opset: int, out: Path) -> Path:
    """Export ``session`` (encoder_model or decoder_with_past_model) of the model in ``folder`` with
    torch's dynamo exporter at ``opset`` to ``out``, with optimum's input and output names and order.

    encoder_model: input_features (batch_size, n_mels, 3000) -> last_hidden_state (batch_size, 1500, d).
    decoder_with_past_model: one token per row, input_ids (batch_size, 1), and per layer the
    self-attention past (batch_size, n_head, past_decoder_sequence_length, head_dim) and the
    cross-attention keys and values (batch_size, n_head, 1500, head_dim) -> logits, present.*.decoder.*.
    """
    import warnings

    import torch

    model, dims = _torch_whisper(folder)
    Encoder, DecoderStep = _torch_modules()
    batch = torch.export.Dim("batch_size", max=64)
    if session == "encoder_model":
        module = Encoder(model).eval()
        args = (torch.zeros(1, dims.n_mels, 3000),)
        names, outputs = ["input_features"], ["last_hidden_state"]
        dynamic = ({0: batch},)
    elif session == "decoder_with_past_model":
        module = DecoderStep(model, dims.n_text_layer, dims.n_text_state).eval()
        head_dim = dims.n_text_state // dims.n_text_head
        past_length = torch.export.Dim("past_decoder_sequence_length", max=dims.n_text_ctx - 1)
        names, past, past_dims = ["input_ids"], [], []
        for layer in range(dims.n_text_layer):
            for part, length in (("decoder", 3), ("encoder", dims.n_audio_ctx)):
                for kind in ("key", "value"):
                    names.append(f"past_key_values.{layer}.{part}.{kind}")
                    past.append(torch.zeros(1, dims.n_text_head, length, head_dim))
                    past_dims.append({0: batch, 2: past_length} if part == "decoder" else {0: batch})
        args = (torch.zeros(1, 1, dtype=torch.int64), *past)
        outputs = ["logits"] + [f"present.{layer}.decoder.{kind}" for layer in range(dims.n_text_layer) for kind in ("key", "value")]
        dynamic = ({0: batch}, tuple(past_dims))
    else:
        raise ValueError(f"no dynamo export of {session!r}: encoder_model or decoder_with_past_model")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer warnings concern torch, not the model
        program = torch.onnx.export(
            module, args, dynamo=True, opset_version=opset, input_names=names, output_names=outputs,
            dynamic_shapes=dynamic, verbose=False,
        )  # fmt: skip
    program.save(str(out))
    return out


def _torch_modules():
    """The two wrappers the exporter traces (defined here: torch is imported only when exporting)."""
    import torch

    class Encoder(torch.nn.Module):
        """input_features -> the encoder's last hidden state."""

        def __init__(self, model):
            super().__init__()
            self.encoder = model.model.encoder

        def forward(self, input_features):
            return self.encoder(input_features).last_hidden_state

    class DecoderStep(torch.nn.Module):
        """One decoder step over flat past tensors, as optimum's decoder_with_past_model takes them."""

        def __init__(self, model, n_layer: int, d_model: int):
            super().__init__()
            self.model, self.n_layer, self.d_model = model, n_layer, d_model

        def forward(self, input_ids, *past):
            from transformers.cache_utils import DynamicCache, EncoderDecoderCache

            self_cache, cross_cache = DynamicCache(), DynamicCache()
            for layer in range(self.n_layer):
                self_cache.update(past[4 * layer], past[4 * layer + 1], layer)
                cross_cache.update(past[4 * layer + 2], past[4 * layer + 3], layer)
            # the cross-attention reads its keys and values from the cache; the layer runs only when
            # encoder states are given, so a placeholder the graph never reads is passed
            unread = torch.zeros(past[2].shape[0], 1, self.d_model)
            out = self.model.model.decoder(
                input_ids=input_ids, encoder_hidden_states=unread, past_key_values=EncoderDecoderCache(self_cache, cross_cache),
                use_cache=True,
            )  # fmt: skip
            present = []
            for layer in out.past_key_values.self_attention_cache.layers:
                present += [layer.keys, layer.values]
            return (self.model.proj_out(out.last_hidden_state), *present)

    return Encoder, DecoderStep

