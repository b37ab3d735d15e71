"""``xdna-ep bench``: the encoder pass it reports is counted right (no timing is asserted)."""

from __future__ import annotations

import pytest

from xdna_ep.bench import BenchOptions, _switches_with_one_gemm_design, bench_encoder, encoder_input, format_encoder


def test_switch_count_of_a_shared_gemm_design_is_steady_state():
    layer = ["xdna_matmul_k384"] * 3 + ["xdna_attention_d64"] + ["xdna_matmul_k384"] * 2 + ["xdna_matmul_k1536"]
    assert _switches_with_one_gemm_design(layer * 4) == 2 * 4  # GEMM -> attention -> GEMM per layer


def test_options_are_validated():
    with pytest.raises(ValueError, match=r"'sim' or 'npu', not 'cpu'"):
        BenchOptions(device="cpu")
    with pytest.raises(ValueError, match=r"unknown precision"):
        BenchOptions(precision="int8")


@pytest.mark.slow
def test_tiny_en_encoder_pass_counts():
    options = BenchOptions(device="sim", profile="npu1", precision="bf16", models=("tiny.en",), cpu_repeats=1)
    result = bench_encoder("tiny.en", options, encoder_input())
    assert result.npu_nodes == 28 and result.launches == 28
    assert result.node_kinds == {"matmul": 24, "attention": 4}
    # per layer: k384 GEMMs -> attention -> k384 GEMMs -> k1536 GEMM -> next layer's k384 GEMMs
    assert result.design_switches == 4 * 4
    assert result.switches_one_gemm_design == 2 * 4
    assert result.hw_contexts == 3
    parts = result.compute_s + result.switch_s + result.launch_s + result.transfer_s
    assert parts == pytest.approx(result.modelled_s, rel=1e-9)
    assert result.switch_s == pytest.approx(16 * 2.81e-3 / 2, rel=1e-9)
    lines = format_encoder(result, options)
    assert any("modelled npu1 device time" in line for line in lines)
