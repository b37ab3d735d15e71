"""The Whisper ONNX variants users bring, built from the real exports with ONNX Runtime's own tools:
its transformer optimizer (bart and bert fusions), its basic / extended graph optimizations saved to
disk, its fp16 converter (keep_io_types True and False), and the export with every input and
dimension renamed; and built from the same weights by torch's dynamo exporter (``torch.onnx.export(...,
dynamo=True)``, through onnxscript) at opset 18 (SDPA decomposed into MatMul, Softmax, MatMul, K^T
through a 3-D Transpose, erf GELU) and at opset 23 (SDPA as ONNX's ``Attention`` op, the decoder's
causal mask as its boolean ``attn_mask``, ``Gelu``). Used by ``test_variants.py``."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import onnx

SESSIONS = ("encoder_model", "decoder_model", "decoder_with_past_model")
VARIANTS = ("optimum", "bart", "bert", "ort_basic", "ort_extended", "fp16_keep_io", "fp16", "renamed", "dynamo18", "dynamo23")
DYNAMO_OPSETS = {"dynamo18": 18, "dynamo23": 23}  # 23: the first opset with ONNX's Attention op


def build_variant(source: Path, variant: str, out: Path, *, n_head: int, d_model: int) -> Path:
    """Write ``variant`` of the ONNX file ``source`` to ``out`` (returns ``out``)."""
    if variant == "optimum":
        return source
    if variant in DYNAMO_OPSETS:
        return dynamo_export(source.parent, source.stem, DYNAMO_OPSETS[variant], out)
    if variant in ("bart", "bert"):
        import contextlib

        from onnxruntime.transformers.optimizer import optimize_model

        with contextlib.chdir(out.parent):  # its shape inference leaves temporary files in the working directory
            optimized = optimize_model(str(source), model_type=variant, num_heads=n_head, hidden_size=d_model)
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

