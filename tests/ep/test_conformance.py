"""ONNX's backend node tests through xdna-ep (passes, placement forced to the NPU, custom ops, simulated
NPU, accurate precision): every MatMul, Gemm and Softmax case passes; Attention passes at least
as many cases as ONNX Runtime's CPU EP."""

from __future__ import annotations

import pytest

from xdna_ep.conformance import ConformanceOptions, prepare_model, run_conformance


@pytest.fixture(scope="module")
def report():
    return run_conformance(ConformanceOptions(device="sim", precision="accurate"))


def test_every_matmul_gemm_and_softmax_case_passes(report):
    for op in ("MatMul", "Gemm", "Softmax"):
        results = report.of(op)
        assert results, op
        failed = [f"{r.name}: {r.detail}" for r in results if not r.passed]
        assert not failed, failed


def test_gemm_and_plain_matmul_and_softmax_cases_run_on_xdna_nodes(report):
    on_xdna = {r.name for r in report.results if r.passed and sum(r.executed.values()) > 0}  # ops that ran
    assert {r.name for r in report.of("Gemm")} <= on_xdna  # all 11, transA/transB/alpha/beta folded
    assert "test_matmul_2d" in on_xdna
    assert {"test_softmax_axis_0", "test_softmax_large_number", "test_softmax_negative_axis"} <= on_xdna


def test_attention_passes_at_least_what_onnxruntime_cpu_passes(report):
    attention = report.of("Attention")
    ours = {r.name for r in attention if r.passed}
    theirs = {r.name for r in attention if r.ort_cpu_passed}
    assert theirs <= ours, sorted(theirs - ours)
    assert report.acceptable()


def test_simple_onnx_attention_cases_run_through_xdna_attention_and_the_others_name_the_reason(report):
    attention = {r.name: r for r in report.of("Attention")}
    through = {name for name, r in attention.items() if r.passed and r.executed.get("Attention")}
    # the cases without mask, past, softcap, grouped heads or unequal head sizes (measured: these 5)
    assert through == {"test_attention_4d", "test_attention_4d_scaled", "test_attention_3d", "test_attention_3d_scaled",
                       "test_attention_3d_transpose_verification"}  # fmt: skip
    for name, r in attention.items():
        if r.ort_cpu_passed and name not in through:
            assert r.refusals, name  # refused at compile time with a named reason
    assert "grouped-query" in attention["test_attention_4d_gqa"].refusals[0]
    assert "attn_mask" in attention["test_attention_4d_attn_mask"].refusals[0]
    assert "first key" in attention["test_attention_4d_causal"].refusals[0]
    lines = "\n".join(report.lines())
    assert "xdna::Attention in 5" in lines and "not through xdna::Attention" in lines
    assert report.lines()[-1] == f"{report.passed} passed, {report.failed} failed"


def test_gemm_preparation_folds_alpha_beta_and_transposes():
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    a, b, c = rng.standard_normal((4, 3)), rng.standard_normal((5, 4)), rng.standard_normal((1, 5))
    a, b, c = (x.astype(np.float32) for x in (a, b, c))
    node = helper.make_node("Gemm", ["a", "b", "c"], ["y"], alpha=0.25, beta=0.35, transA=1, transB=1)
    graph = helper.make_graph(
        [node], "gemm",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, x.shape) for n, x in (("a", a), ("b", b), ("c", c))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, (3, 5))],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    prepared, feeds = prepare_model(model, [a, b, c])
    assert list(feeds) == ["a"] and [n.op_type for n in prepared.graph.node] == ["Transpose", "MatMul", "Add"]
    session = ort.InferenceSession(prepared.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = 0.25 * a.T @ b.T + 0.35 * c
    np.testing.assert_allclose(session.run(None, feeds)[0], expected, rtol=1e-6, atol=1e-6)
