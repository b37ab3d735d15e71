"""The pass pipeline: fixes the order of the fusions, partitions, and reports counts and reasons.

    fuse_attention -> fuse_matmul -> fuse_softmax -> partition

Attention goes first because it consumes the Softmax and the Q @ K^T / P @ V MatMuls; the linear
layers' MatMuls by constant weights come next; a Softmax left over becomes xdna::Softmax. The
partitioner then writes every node that stays on the CPU back as its original ONNX nodes.

Only Whisper sessions (encoder, decoder and decoder_with_past, recognised from the graph's structure) are rewritten; any other model
comes back unchanged with zero fusions and says why. ``decoder_model_merged.onnx`` is refused: its
attention lives inside If branches, and the two plain decoder files carry the same graphs.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from onnx import ModelProto

from xdna_ep.errors import ModelError
from xdna_ep.graph_passes.fuse_attention import fuse_attention
from xdna_ep.graph_passes.fuse_matmul import fuse_matmul
from xdna_ep.graph_passes.fuse_softmax import fuse_softmax
from xdna_ep.graph_passes.graph import ensure_xdna_opset, has_subgraph_ops
from xdna_ep.graph_passes.match_log import MatchLog, Rejection
from xdna_ep.graph_passes.partition import NodePlacement, PlacementOptions, partition
from xdna_ep.graph_passes.shapes import MERGED_DECODER, OTHER, ShapeTable, representative_shapes, session_role

Pass = Callable[..., tuple[ModelProto, bool]]
FUSION_PASSES: tuple[tuple[str, Pass], ...] = (
    ("fuse_attention", fuse_attention),
    ("fuse_matmul", fuse_matmul),
    ("fuse_softmax", fuse_softmax),
)


@dataclass(frozen=True)
class PassReport:
    """What the pipeline did to one model."""

    role: str  # encoder, decoder, decoder_with_past, other
    counts: dict[str, int]  # pass name -> nodes it fused
    kinds: Counter  # fused kind -> count ("attention.cross", "matmul+bias+gelu", ...)
    placements: tuple[NodePlacement, ...] = ()
    rejections: tuple[Rejection, ...] = ()
    assumptions: str = ""  # representative sizes the shapes were inferred at
    note: str = ""  # why nothing was done, when nothing was
    profile: str = "npu1"

    @property
    def fused_total(self) -> int:
        return sum(self.counts.values())

    def placed(self, where: str) -> list[NodePlacement]:
        return [p for p in self.placements if p.placement == where]


def run_passes(
    model: ModelProto,
    *,
    profile: str = "npu1",
    placement: PlacementOptions | str | None = None,
    precision: str = "bf16",
    partition_nodes: bool = True,
    any_model: bool = False,
    dims: dict[str, int] | None = None,
) -> tuple[ModelProto, PassReport]:
    """Fuse and partition ``model`` in place; returns it with the report.

    ``partition_nodes=False`` stops after the fusions (every fused node kept, originals still recorded).
    ``any_model=True`` rewrites models that are not Whisper sessions too (the ONNX conformance run).
    ``dims`` (symbolic dimension name -> size) sets the sizes placement plans for, instead of the
    representative ones found from the graph's structure.
    """
    options = PlacementOptions.parse(placement)
    role = session_role(model)
    if role == MERGED_DECODER or has_subgraph_ops(model, ("MatMul", "Softmax")):
        raise ModelError(
            "this is a merged decoder (decoder_model_merged.onnx): its attention sits inside If branches, "
            "which xdna-ep does not rewrite; use decoder_model.onnx and decoder_with_past_model.onnx"
        )
    if role == OTHER and not any_model:
        names = ", ".join(i.name for i in model.graph.input)
        return model, PassReport(
            role=role,
            counts={name: 0 for name, _ in FUSION_PASSES},
            kinds=Counter(),
            note=f"not a Whisper encoder/decoder export (inputs: {names}): left unchanged",
            profile=profile,
        )
    shapes: ShapeTable = representative_shapes(model, dims)
    original_order = {node.output[0]: index for index, node in enumerate(model.graph.node) if node.output}
    log = MatchLog()
    counts: dict[str, int] = {}
    for name, fusion in FUSION_PASSES:
        before = sum(log.fused.values())
        model, _ = fusion(model, shapes, log)
        counts[name] = sum(log.fused.values()) - before
    decisions: list[NodePlacement] = []
    if partition_nodes:
        model, _ = partition(
            model, shapes, profile=profile, placement=options, precision=precision, decisions=decisions,
            original_order=original_order,
        )  # fmt: skip
    ensure_xdna_opset(model)
    return model, PassReport(
        role=role,
        counts=counts,
        kinds=Counter(log.fused),
        placements=tuple(decisions),
        rejections=tuple(log.rejections),
        assumptions=shapes.assumptions,
        profile=profile,
    )
