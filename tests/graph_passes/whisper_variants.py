"""The Whisper ONNX variants users bring, built from the real exports with ONNX Runtime's own tools:
its transformer optimizer (bart and bert fusions), its basic / extended graph optimizations saved to
disk, its fp16 converter (keep_io_types True and False), and the export with every input and
dimension renamed. Used by ``test_variants.py``."""

from __future__ import annotations

from pathlib import Path

import onnx

SESSIONS = ("encoder_model", "decoder_model", "decoder_with_past_model")
VARIANTS = ("optimum", "bart", "bert", "ort_basic", "ort_extended", "fp16_keep_io", "fp16", "renamed")


def build_variant(source: Path, variant: str, out: Path, *, n_head: int, d_model: int) -> Path:
    """Write ``variant`` of the ONNX file ``source`` to ``out`` (returns ``out``)."""
    if variant == "optimum":
        return source
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
