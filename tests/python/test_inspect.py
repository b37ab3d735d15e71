"""``xdna-ep inspect``: the table, the JSON and the explanations, on the real models."""

from __future__ import annotations

import json

import pytest

from xdna_ep.cli import main


@pytest.fixture(scope="module")
def base_npu1_json():
    from real_sessions import model_folder

    model_folder("base")  # exported on first use; a failed export fails the test
    return _run_json(["inspect", "--model", "base", "--profile", "npu1", "--json", "--explain"])


def _run_json(argv: list[str]) -> dict:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(argv) == 0
    return json.loads(out.getvalue())


def test_base_npu1_encoder_flops_on_the_npu_and_every_single_token_matmul_on_the_cpu(base_npu1_json):
    sessions = {entry["session"]: entry for entry in base_npu1_json["sessions"]}
    assert set(sessions) == {"encoder_model", "decoder_model", "decoder_with_past_model"}
    encoder = sessions["encoder_model"]["totals"]
    assert encoder["npu_share_of_fused_flops"] >= 0.95
    assert encoder["npu_share_of_matrix_flops"] >= 0.95  # the convolutions counted too
    with_past = sessions["decoder_with_past_model"]
    matmuls = [node for node in with_past["nodes"] if node["kind"].startswith("matmul")]
    assert matmuls and all(node["placement"] == "cpu" for node in matmuls)
    assert all("< NPU" in node["reason"] and node["npu_s"] > node["cpu_s"] for node in matmuls)
    assert with_past["not_fused"] == []
    gemm_designs = sessions["encoder_model"]["gemm_designs"]
    assert gemm_designs["dynamic_k"] and gemm_designs["switches_per_pass"] == 2 * 6  # base: 6 layers
    assert gemm_designs["designs"] == ["xdna_matmul_kdyn_npu1", "xdna_attention_d64_bf16_npu1"]


def test_table_lists_kinds_shapes_placements_and_totals(capsys):
    from real_sessions import model_folder

    folder = model_folder("tiny.en")
    assert main(["inspect", "--model", str(folder / "encoder_model.onnx"), "--profile", "npu2"]) == 0
    text = capsys.readouterr().out
    assert "== encoder_model (encoder, profile npu2)" in text
    assert "attention.self" in text and "m=1500 k=384 n=1536" in text
    assert "total: 28 fused nodes" in text and "fused GFLOP on the NPU" in text
    assert "GEMM designs: one dynamic-K GEMM design: 2 designs, 8 switches" in text


def test_explain_prints_why_a_candidate_did_not_fuse(tmp_path, capsys):
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    # a decoder by structure (token ids read by a Gather, rank-3 encoder states) whose only MatMul
    # multiplies two activations
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["embedding", "input_ids"], ["tokens"]),
            helper.make_node("MatMul", ["input_ids_f", "encoder_hidden_states"], ["logits"]),
        ],
        "decoder",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, 1]),
            helper.make_tensor_value_info("input_ids_f", TensorProto.FLOAT, [1, 1, 4]),
            helper.make_tensor_value_info("encoder_hidden_states", TensorProto.FLOAT, [1, 4, 3]),
        ],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1, 3]),
            helper.make_tensor_value_info("tokens", TensorProto.FLOAT, [1, 1, 3]),
        ],
        [numpy_helper.from_array(np.zeros((5, 3), np.float32), "embedding")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    path = tmp_path / "decoder_model.onnx"
    onnx.save(model, str(path))
    assert main(["inspect", "--model", str(path), "--explain"]) == 0
    text = capsys.readouterr().out
    assert "not fused (1):" in text and "computed at run time" in text


def test_a_missing_model_path_is_a_clear_error(capsys):
    assert main(["inspect", "--model", "/nonexistent/folder/model.onnx"]) == 2
    assert "model not found" in capsys.readouterr().err


def _contrib_attention_model():
    """x (1, 10, 8) -> com.microsoft Attention (packed QKV weight (8, 24) and bias, 2 heads) -> y."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 24)).astype(np.float32), "w"),
        numpy_helper.from_array(np.zeros(24, np.float32), "b"),
    ]
    graph = helper.make_graph(
        [helper.make_node("Attention", ["x", "w", "b"], ["y"], name="attn", domain="com.microsoft", num_heads=2)],
        "contrib",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 10, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10, 8])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 10
    return model


def test_contrib_attention_flops_are_counted_as_matrix_work():
    from xdna_ep.graph_passes.shapes import representative_shapes
    from xdna_ep.inspect_model import unfused_matrix_flops

    model = _contrib_attention_model()
    found = unfused_matrix_flops(model, representative_shapes(model))
    # projection 2 * 10 * 8 * 24 = 3840, then Q K^T and P V: 2 * 10 * 10 * (8 + 8) = 3200
    assert found == {"com.microsoft.Attention": (1, 3840 + 3200)}


@pytest.mark.parametrize("placement", ["npu", "cpu"])
def test_a_contrib_attention_is_fused_and_computes_what_onnxruntime_computes(placement):
    import numpy as np
    import onnxruntime as ort

    from xdna_ep.ep.session import bind, session_options
    from xdna_ep.graph_passes.orchestrator import run_passes

    model = _contrib_attention_model()
    x = np.random.default_rng(1).standard_normal((1, 10, 8)).astype(np.float32)
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    fused, report = run_passes(model, placement=placement, any_model=True)
    assert report.kinds == {"attention.self": 1, "matmul+bias": 1} and not report.rejections
    ops = {(n.domain, n.op_type) for n in fused.graph.node}
    assert (("com.microsoft", "Attention") in ops) == (placement == "cpu")  # written back as the contrib node
    session = ort.InferenceSession(bind(fused, device="cpu").SerializeToString(), session_options(), providers=["CPUExecutionProvider"])
    # fp32 reference vs ONNX Runtime's contrib kernel: measured 2.4e-7 here
    np.testing.assert_allclose(session.run(None, {"x": x})[0], expected, rtol=0, atol=1e-5)


def test_bad_dims_name_the_part():
    from xdna_ep.inspect_model import parse_dims

    assert parse_dims("a=3, b=1") == {"a": 3, "b": 1}
    with pytest.raises(ValueError, match="'a=x' is not name=positive integer"):
        parse_dims("a=x")
