"""partition: placement options, write-back of CPU nodes as their original ONNX nodes, and the cost
model's decisions on the real models (encoder on the NPU, single-token decoder on the CPU)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from real_sessions import model_folder, plain_options, real_inputs

from xdna_ep.graph_passes import xdna_ops
from xdna_ep.graph_passes.orchestrator import run_passes
from xdna_ep.graph_passes.partition import PlacementOptions


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("auto", PlacementOptions()),
        ("npu", PlacementOptions("npu", "npu", "npu")),
        ("cpu", PlacementOptions("cpu", "cpu", "cpu")),
        ("matmul=cpu", PlacementOptions(matmul="cpu")),
        ("npu,softmax=cpu", PlacementOptions("npu", "npu", "cpu")),
        ("attention=npu, npu", PlacementOptions("npu", "npu", "npu")),
    ],
)
def test_placement_options_parse(spec, expected):
    assert PlacementOptions.parse(spec) == expected


@pytest.mark.parametrize("spec, message", [("gpu", "placement matmul='gpu'"), ("conv=npu", "unknown op kind 'conv'")])
def test_bad_placement_options_name_the_problem(spec, message):
    with pytest.raises(ValueError, match=message):
        PlacementOptions.parse(spec)


def _signature(node: onnx.NodeProto) -> tuple:
    return node.op_type, node.domain, tuple(node.input), tuple(node.output), node.SerializeToString()


def test_nodes_placed_on_the_cpu_are_the_original_onnx_nodes(tiny_en_folder):
    path = tiny_en_folder / "decoder_with_past_model.onnx"
    original = onnx.load(str(path))
    written_back, report = run_passes(onnx.load(str(path)), placement="cpu")
    assert report.fused_total > 0 and not report.placed("npu")
    assert not [n for n in written_back.graph.node if n.domain == xdna_ops.DOMAIN]
    assert not [p for p in written_back.metadata_props if p.key.startswith("xdna.original/")]
    # everything written back: the very nodes of the original, in the original order
    assert [_signature(node) for node in written_back.graph.node] == [_signature(node) for node in original.graph.node]
    feeds = real_inputs(tiny_en_folder)["decoder_with_past_model"]
    run = lambda model: ort.InferenceSession(  # noqa: E731
        model.SerializeToString(), plain_options(), providers=["CPUExecutionProvider"]
    ).run(None, feeds)
    for expected, actual in zip(run(original), run(written_back)):
        np.testing.assert_array_equal(actual, expected)  # the same kernels on the same nodes: bit-equal


def test_per_kind_override(tiny_en_folder):
    model, report = run_passes(onnx.load(str(tiny_en_folder / "encoder_model.onnx")), placement="npu,attention=cpu")
    placed = {(p.kind.split("+")[0].split(".")[0], p.placement) for p in report.placements}
    assert placed == {("matmul", "npu"), ("attention", "cpu")}
    assert {n.op_type for n in model.graph.node if n.domain == xdna_ops.DOMAIN} == {xdna_ops.MATMUL}
    assert all("forced to" in p.reason for p in report.placements)


def test_base_on_npu1_encoder_on_the_npu_single_token_decoder_on_the_cpu(base_folder):
    encoder, report = run_passes(onnx.load(str(base_folder / "encoder_model.onnx")), profile="npu1")
    npu_flops = sum(p.flops for p in report.placed("npu"))
    assert npu_flops / sum(p.flops for p in report.placements) >= 0.95
    _, report = run_passes(onnx.load(str(base_folder / "decoder_with_past_model.onnx")), profile="npu1")
    matmuls = [p for p in report.placements if p.kind.startswith("matmul")]
    assert matmuls and all(p.placement == "cpu" for p in matmuls)
    for placement in matmuls:
        assert placement.reason.startswith("CPU ") and "< NPU" in placement.reason
        # one token per beam: m = 5 rows, still too few to pay an NPU launch on npu1
        assert "m=5 " in placement.reason and "one token per step" in placement.reason


def test_npu2_places_the_logits_projection_of_a_beam_on_the_npu(tiny_en_folder):
    """At batch 5 (a beam) the vocabulary projection pays its launch on npu2; at batch 1 it would not."""
    _, report = run_passes(onnx.load(str(tiny_en_folder / "decoder_with_past_model.onnx")), profile="npu2")
    projection = next(p for p in report.placements if p.shape == "m=5 k=384 n=51864")  # hidden -> vocabulary
    assert projection.placement == "npu" and "batch_size=5 (a beam of 5" in projection.reason
    assert projection.npu_s < projection.cpu_s


@pytest.fixture(scope="module")
def tiny_en_folder():
    return model_folder("tiny.en")


@pytest.fixture(scope="module")
def base_folder():
    return model_folder("base")
