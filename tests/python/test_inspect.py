"""``xdna-ep inspect``: the table, the JSON and the explanations, on the real models."""

from __future__ import annotations

import json

import pytest

from xdna_ep.cli import main


@pytest.fixture(scope="module")
def base_npu1_json():
    from real_sessions import model_folder

    model_folder("base")  # skips when the model cannot be built here
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

    # a Whisper-named decoder whose only MatMul multiplies two activations
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input_ids_f", "encoder_hidden_states"], ["logits"])],
        "decoder",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, 1]),
            helper.make_tensor_value_info("input_ids_f", TensorProto.FLOAT, [1, 4]),
            helper.make_tensor_value_info("encoder_hidden_states", TensorProto.FLOAT, [4, 3]),
        ],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3])],
        [numpy_helper.from_array(np.zeros(1, np.float32), "unused")],
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
