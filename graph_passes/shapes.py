"""Which Whisper session a model is, and the shapes of its tensors at representative input sizes.

The role comes from the graph's structure, not from optimum's names: a float input read by a
convolution is the encoder's log-mel; integer ids read as Gather indices are a decoder's tokens; a
rank-4 float input concatenated with new keys/values is a self-attention past (decoder with past); a
rank-3 float input next to the tokens is the encoder states (first decoder step). A merged decoder
(an If between the two decoders) is named as one.

The partitioner decides per node and per shape, but the exported graphs have symbolic dimensions.
Whisper's are static enough: the encoder always sees 1500 positions; the first decoder step sees the
prompt (about 4 tokens, run once per window whatever the beam); ``decoder_with_past`` sees one token
per beam after a past of up to 224 positions (the sampling length of openai-whisper's decoding, half
the text context), the beams being its batch: ``DECODE_BATCH`` of them, the default beam search. Each
symbolic input dimension is given the size of what it measures, found from the input it belongs to
(whatever it is named); an explicit ``dims`` mapping (dimension name -> size) overrides. ONNX Runtime's
symbolic shape inference propagates them (it reads any ``Attention`` node as its contrib op, so ONNX's own
opset-23 Attention is inferred as the MatMul, Softmax, MatMul it computes); the substitutions are kept in ``assumptions`` so that every
placement reason (and ``inspect``) can state them.
"""

from __future__ import annotations

import contextlib
import tempfile
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

_LOOKED_THROUGH = ("Cast", "Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze")  # value-preserving

# Initializers larger than this are replaced by typed inputs before shape inference (values unused).
_LARGE_INITIALIZER_ELEMENTS = 1024


MERGED_DECODER = "merged_decoder"

# What a symbolic input dimension measures (found from its input's structure) -> representative size.
BATCH, AUDIO_POSITIONS, TOKENS, PAST_TOKENS, MEL_FRAMES = "batch", "audio", "tokens", "past", "frames"
MEANING_SIZES = {BATCH: 1, AUDIO_POSITIONS: 1500, PAST_TOKENS: 224, MEL_FRAMES: 3000}
MEANING_REASONS = {
    BATCH: "one utterance",
    AUDIO_POSITIONS: "1500 audio positions",
    PAST_TOKENS: "past of up to 224 tokens",
    MEL_FRAMES: "30-s window of 3000 frames",
}


@dataclass(frozen=True)
class GraphInputs:
    """The graph's inputs by what they are, found from the nodes that read them."""

    mel: list[onnx.ValueInfoProto]  # float, read by a Conv (through Cast / Identity)
    token_ids: list[onnx.ValueInfoProto]  # integer, read as Gather indices
    self_past: list[onnx.ValueInfoProto]  # rank-4 float, concatenated with the new keys / values
    cross_states: list[onnx.ValueInfoProto]  # rank-3 encoder states, or rank-4 cross-attention keys / values
    merged: bool  # an If node chooses between two decoders (a boolean input)


def classify_inputs(model: ModelProto) -> GraphInputs:
    """Sort the graph inputs by the nodes that read them (casts and reshapes are looked through)."""
    graph = model.graph
    initializers = {init.name for init in graph.initializer}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for index, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node, index))

    def readers(name: str, depth: int = 0) -> list:
        found = []
        for node, index in consumers.get(name, []):
            if node.op_type in _LOOKED_THROUGH and index == 0 and depth < 4:
                found.extend(readers(node.output[0], depth + 1))
            else:
                found.append((node, index))
        return found

    mel, token_ids, self_past, cross_states = [], [], [], []
    merged = any(node.op_type == "If" for node in graph.node) and any(
        inp.type.tensor_type.elem_type == TensorProto.BOOL for inp in graph.input
    )
    for value_info in graph.input:
        if value_info.name in initializers:
            continue
        tensor_type = value_info.type.tensor_type
        rank = len(tensor_type.shape.dim)
        is_float = tensor_type.elem_type in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16)
        read_by = readers(value_info.name)
        if is_float and any(node.op_type == "Conv" and index == 0 for node, index in read_by):
            mel.append(value_info)
        elif tensor_type.elem_type in (TensorProto.INT64, TensorProto.INT32) and any(
            node.op_type == "Gather" and index == 1 for node, index in read_by
        ):
            token_ids.append(value_info)
        elif is_float and rank == 4 and any(node.op_type == "Concat" for node, _ in read_by):
            self_past.append(value_info)
        elif is_float and rank in (3, 4):
            cross_states.append(value_info)
    return GraphInputs(mel, token_ids, self_past, cross_states, merged)


def session_role(model: ModelProto) -> str:
    """ENCODER, DECODER, DECODER_WITH_PAST, MERGED_DECODER or OTHER, from the graph's structure."""
    inputs = classify_inputs(model)
    if inputs.mel and not inputs.token_ids:
        return ENCODER
    if inputs.token_ids:
        if inputs.merged:
            return MERGED_DECODER
        if inputs.self_past:
            return DECODER_WITH_PAST
        if inputs.cross_states:
            return DECODER
    return OTHER


def structural_dims(model: ModelProto, role: str) -> dict[str, tuple[int, str]]:
    """Symbolic input dimension name -> (representative size, reason), from what each input is."""
    inputs = classify_inputs(model)
    dims: dict[str, tuple[int, str]] = {}

    def assign(value_info, meanings) -> None:
        for dim, meaning in zip(value_info.type.tensor_type.shape.dim, meanings):
            if dim.HasField("dim_value") or meaning is None or not dim.dim_param:
                continue
            if meaning == TOKENS:
                size, reason = (1, WITH_PAST_STEP_REASON) if role == DECODER_WITH_PAST else (4, DIM_REASONS["decoder_sequence_length"])
            elif meaning == BATCH and role == DECODER_WITH_PAST:
                size, reason = DECODE_BATCH, WITH_PAST_BATCH_REASON
            else:
                size, reason = MEANING_SIZES[meaning], MEANING_REASONS[meaning]
            dims.setdefault(dim.dim_param, (size, reason))

    for value_info in inputs.mel:
        assign(value_info, (BATCH, None, MEL_FRAMES))
    for value_info in inputs.token_ids:
        assign(value_info, (BATCH, TOKENS))
    for value_info in inputs.self_past:
        assign(value_info, (BATCH, None, PAST_TOKENS, None))
    for value_info in inputs.cross_states:
        rank = len(value_info.type.tensor_type.shape.dim)
        assign(value_info, (BATCH, AUDIO_POSITIONS, None) if rank == 3 else (BATCH, None, AUDIO_POSITIONS, None))
    return dims


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


def representative_shapes(model: ModelProto, dims: dict[str, int] | None = None) -> ShapeTable:
    """Infer the model's tensor shapes with its symbolic dims set to representative sizes.

    ``dims`` (dimension name -> size) is used as given ("given" in ``assumptions``); other dims get
    the size of what they measure (``structural_dims``); dims nothing explains are set to 1 and named
    in ``assumptions`` as assumed.
    """
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    role = session_role(model)
    found = structural_dims(model, role)
    for name, size in (dims or {}).items():
        found[name] = (int(size), "given")
    skeleton, used = _skeleton_with_fixed_dims(model, {name: size for name, (size, _) in found.items()})
    _onnx_attention_as_matmuls(skeleton)
    try:
        with tempfile.TemporaryDirectory() as scratch, contextlib.chdir(scratch):
            # on a partial result it saves sym_shape_infer_temp.onnx in the working directory, then raises
            inferred = SymbolicShapeInference.infer_shapes(skeleton, auto_merge=True, guess_output_rank=False)
    except Exception as error:  # noqa: BLE001 - third-party inference fails in many ways; report it
        try:  # ORT's symbolic inference fails on some opset-18 reductions; ONNX's own copes with static dims
            inferred = onnx.shape_inference.infer_shapes(skeleton, strict_mode=True)
        except Exception as onnx_error:  # noqa: BLE001
            # ORT's inference often fails on a bare assert (no message); ONNX's names the node
            detail = f"{type(error).__name__} {error}".strip() + f"; ONNX's shape inference: {onnx_error}"
            raise ModelError(f"shape inference failed on {model.graph.name or 'the model'}: {detail}") from error
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
        reason = found[name][1] if name in found else "unknown dimension, assumed"
        notes.append(f"{name}={value} ({reason})")
    return ShapeTable(role=role, shapes=shapes, elem_types=elem_types, assumptions=", ".join(notes))


def _onnx_attention_as_matmuls(skeleton: ModelProto) -> None:
    """Replace each default-domain Attention node of one output and equal Q and K/V heads (in place) by
    MatMul(Softmax(Q @ K^T), V), which has its output's shape and type: 4-D (b, h, n_q, d_v), or
    3-D (b, n_q, h * d_v). The skeleton is only for shape inference; other Attention nodes are left."""
    nodes = []
    for node in skeleton.graph.node:
        heads = {a.name: helper.get_attribute_value(a) for a in node.attribute if a.name in ("q_num_heads", "kv_num_heads")}
        if (
            node.op_type != "Attention" or node.domain not in ("", "ai.onnx") or len(node.input) < 3
            or any(node.output[1:]) or heads.get("q_num_heads", 0) != heads.get("kv_num_heads", 0)
        ):
            nodes.append(node)
            continue
        q, k, v = node.input[:3]
        out = node.output[0]
        nodes += [
            helper.make_node("Einsum", [q, k], [f"{out}/scores"], equation="...qd,...kd->...qk"),  # Q @ K^T, any rank
            helper.make_node("Softmax", [f"{out}/scores"], [f"{out}/probs"], axis=-1),
            helper.make_node("MatMul", [f"{out}/probs", v], [out]),
        ]
    del skeleton.graph.node[:]
    skeleton.graph.node.extend(nodes)


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
        if elements > _LARGE_INITIALIZER_ELEMENTS or init.data_location == TensorProto.EXTERNAL:  # external: not loaded
            inputs.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
        else:
            small.append(init)
    skeleton_graph = helper.make_graph(list(graph.node), graph.name, inputs, list(graph.output), small)
    skeleton = helper.make_model(skeleton_graph, opset_imports=list(model.opset_import))
    skeleton.ir_version = model.ir_version
    return skeleton, used
