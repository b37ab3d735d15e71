"""Which Whisper session a model is, and the shapes of its tensors at representative input sizes.

The partitioner decides per node and per shape, but the exported graphs have symbolic dimensions.
Whisper's are static enough: the encoder always sees 1500 positions; the first decoder step sees the
prompt (about 4 tokens, run once per window whatever the beam); ``decoder_with_past`` sees one token
per beam after a past of up to 224 positions (the sampling length of openai-whisper's decoding, half
the text context), the beams being its batch: ``DECODE_BATCH`` of them, the default beam search. Those values are substituted and
ONNX Runtime's symbolic shape inference propagates them; the substitutions are kept in ``assumptions``
so that every placement reason can state them.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx
from onnx import ModelProto, TensorProto, helper

from xdna_ep.errors import ModelError

ENCODER = "encoder"
DECODER = "decoder"  # first step: prompt tokens + encoder states
DECODER_WITH_PAST = "decoder_with_past"
OTHER = "other"

# Beams decoded together by decoder_with_past: the default beam size (xdna_ep.decoding.DecodingOptions
# .beam_size, which a higher layer defines; a test keeps the two equal). Greedy decoding runs batch 1.
DECODE_BATCH = 5

# Representative sizes of the symbolic dimensions of optimum's Whisper export.
REPRESENTATIVE_DIMS = {
    ENCODER: {"batch_size": 1},
    DECODER: {"batch_size": 1, "decoder_sequence_length": 4, "encoder_sequence_length": 1500},
    DECODER_WITH_PAST: {
        "batch_size": DECODE_BATCH,
        "decoder_sequence_length": 1,
        "past_decoder_sequence_length": 224,
        "encoder_sequence_length": 1500,
    },
}
DIM_REASONS = {
    "batch_size": "one utterance",
    "decoder_sequence_length": "prompt of about 4 tokens",
    "past_decoder_sequence_length": "past of up to 224 tokens",
    "encoder_sequence_length": "1500 audio positions",
}
WITH_PAST_STEP_REASON = "one token per step"
WITH_PAST_BATCH_REASON = f"a beam of {DECODE_BATCH}, the default beam search"

# Initializers larger than this are replaced by typed inputs before shape inference (values unused).
_LARGE_INITIALIZER_ELEMENTS = 1024


def session_role(model: ModelProto) -> str:
    """ENCODER, DECODER, DECODER_WITH_PAST or OTHER, from the graph's input and output names."""
    inputs = {inp.name for inp in model.graph.input}
    outputs = {out.name for out in model.graph.output}
    if "input_features" in inputs and "last_hidden_state" in outputs:
        return ENCODER
    if "input_ids" in inputs and "logits" in outputs:
        if any(name.startswith("past_key_values.") for name in inputs):
            if "use_cache_branch" in inputs:
                return DECODER  # merged decoder: refused by the orchestrator, named here
            return DECODER_WITH_PAST
        if "encoder_hidden_states" in inputs:
            return DECODER
    return OTHER


@dataclass(frozen=True)
class ShapeTable:
    """Shapes (ints) and element types of a model's tensors at representative input sizes."""

    role: str
    shapes: dict[str, tuple[int, ...]]
    elem_types: dict[str, int]
    assumptions: str  # e.g. "decoder_sequence_length=1 (one token per step), ..."

    def shape(self, name: str) -> tuple[int, ...] | None:
        return self.shapes.get(name)

    def is_float32(self, name: str) -> bool | None:
        """True / False when the element type is known, None when it is not."""
        elem_type = self.elem_types.get(name)
        return None if elem_type is None else elem_type == TensorProto.FLOAT


def representative_shapes(model: ModelProto) -> ShapeTable:
    """Infer the model's tensor shapes with its symbolic dims set to representative sizes.

    Dims the table does not know are set to 1 and named in ``assumptions``.
    """
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    role = session_role(model)
    dims = REPRESENTATIVE_DIMS.get(role, {})
    skeleton, used = _skeleton_with_fixed_dims(model, dims)
    try:
        inferred = SymbolicShapeInference.infer_shapes(skeleton, auto_merge=True, guess_output_rank=False)
    except Exception as error:  # noqa: BLE001 - third-party inference fails in many ways; report it
        try:  # ORT's symbolic inference fails on some opset-18 reductions; ONNX's own copes with static dims
            inferred = onnx.shape_inference.infer_shapes(skeleton, strict_mode=True)
        except Exception:  # noqa: BLE001
            raise ModelError(f"shape inference failed on {model.graph.name or 'the model'}: {error}") from error
    shapes: dict[str, tuple[int, ...]] = {}
    elem_types: dict[str, int] = {}
    value_infos = [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
    for value_info in value_infos:
        tensor_type = value_info.type.tensor_type
        if not value_info.type.HasField("tensor_type"):
            continue
        elem_types[value_info.name] = tensor_type.elem_type
        if tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in tensor_type.shape.dim):
            shapes[value_info.name] = tuple(d.dim_value for d in tensor_type.shape.dim)
    for init in model.graph.initializer:
        shapes[init.name] = tuple(init.dims)
        elem_types[init.name] = init.data_type
    notes = []
    for name, value in used.items():
        reason = DIM_REASONS.get(name, "unknown dimension, assumed")
        if role == DECODER_WITH_PAST and name == "decoder_sequence_length":
            reason = WITH_PAST_STEP_REASON
        if role == DECODER_WITH_PAST and name == "batch_size":
            reason = WITH_PAST_BATCH_REASON
        notes.append(f"{name}={value} ({reason})")
    return ShapeTable(role=role, shapes=shapes, elem_types=elem_types, assumptions=", ".join(notes))


def _skeleton_with_fixed_dims(model: ModelProto, dims: dict[str, int]) -> tuple[ModelProto, dict[str, int]]:
    """A copy of the model without large initializer data and with its symbolic input dims fixed."""
    graph = model.graph
    used: dict[str, int] = {}
    inputs = []
    for value_info in graph.input:
        value_info = onnx.ValueInfoProto.FromString(value_info.SerializeToString())
        for dim in value_info.type.tensor_type.shape.dim:
            if dim.HasField("dim_param") or not dim.HasField("dim_value"):
                value = dims.get(dim.dim_param, 1)
                used[dim.dim_param or "?"] = value
                dim.Clear()
                dim.dim_value = value
        inputs.append(value_info)
    small = []
    for init in graph.initializer:
        elements = 1
        for size in init.dims:
            elements *= size
        if elements > _LARGE_INITIALIZER_ELEMENTS:
            inputs.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
        else:
            small.append(init)
    skeleton_graph = helper.make_graph(list(graph.node), graph.name, inputs, list(graph.output), small)
    skeleton = helper.make_model(skeleton_graph, opset_imports=list(model.opset_import))
    skeleton.ir_version = model.ir_version
    return skeleton, used
