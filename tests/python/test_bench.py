"""``xdna-ep bench``: the encoder pass it reports is counted right (no timing is asserted)."""

from __future__ import annotations

import pytest

from xdna_ep.bench import BenchOptions, bench_encoder, encoder_input, format_encoder


def test_options_are_validated():
    with pytest.raises(ValueError, match=r"'sim' or 'npu' \('cpu' for --memory\), not 'gpu'"):
        BenchOptions(device="gpu")
    with pytest.raises(ValueError, match=r"unknown precision"):
        BenchOptions(precision="int8")


def test_cpu_device_measures_only_memory(capsys):
    import argparse

    from xdna_ep.bench import configure_parser, run_command

    parser = argparse.ArgumentParser()
    configure_parser(parser)
    assert run_command(parser.parse_args(["--device", "cpu"])) == 2  # the encoder bench models an NPU
    assert "--device cpu measures only --memory" in capsys.readouterr().err


@pytest.mark.slow
def test_tiny_en_encoder_pass_counts():
    options = BenchOptions(device="sim", profile="npu1", precision="bf16", models=("tiny.en",), cpu_repeats=1)
    result = bench_encoder("tiny.en", options, encoder_input())
    assert result.npu_nodes == 28 and result.launches == 28
    assert result.node_kinds == {"matmul": 24, "attention": 4}
    # the planner's dynamic-K GEMM design: per layer GEMMs -> attention -> GEMMs (4 switches with one per K)
    assert result.gemm_designs.startswith("one dynamic-K GEMM design: 2 designs, 8 switches")
    assert result.design_switches == 2 * 4
    assert result.hw_contexts == 2
    parts = result.compute_s + result.switch_s + result.launch_s + result.runtime_parameters_s + result.transfer_s
    assert parts == pytest.approx(result.modelled_s, rel=1e-9)
    assert result.switch_s == pytest.approx(8 * 2.81e-3 / 2, rel=1e-9)
    assert result.runtime_parameters_s == pytest.approx(24 * 15e-6, rel=1e-9)  # every GEMM launch
    assert sum(result.compute_per_kind_s.values()) == pytest.approx(result.compute_s, rel=1e-9)
    assert set(result.compute_per_kind_s) == {"matmul", "attention"}
    lines = format_encoder(result, options)
    assert any("modelled npu1 device time" in line for line in lines)
    assert any(line.startswith("  GEMM designs: one dynamic-K") for line in lines)
    # the simulator's compute is the bottom-up design timing summed over the pass's launches
    from xdna_ep.ep import calibration
    from xdna_ep.ep.device import NPU1

    analytic_ms = calibration.encoder_device_ms(NPU1, 384, 6, 4)
    assert (result.compute_s + result.launch_s) * 1e3 == pytest.approx(analytic_ms, rel=1e-6)
    data = result.as_dict()
    low, high = data["device_ms"]  # a range: the fp32 multiply cost is unverified
    assert low == pytest.approx(result.modelled_s * 1e3, abs=0.01) and high > low
    assert data["total_ms"] == pytest.approx([low + data["host_ms"], high + data["host_ms"]], abs=0.02)
    assert data["switches"] == 8 and data["launches"] == 28
    assert data["clip"]["decoder_cpu_ms"] > 0 and data["host"]["bf16_packing_and_copies_ms"] > 0
