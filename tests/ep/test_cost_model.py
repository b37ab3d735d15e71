"""The cost model reproduces npu.md's measurements (within 25 %) and places Whisper's nodes sensibly."""

from __future__ import annotations

import pytest

from xdna_ep.ep import cost_model
from xdna_ep.ep.device import NPU1, NPU2, PROFILES, get_profile

TOLERANCE = 0.25  # npu.md figures are single measurements on one machine: 25 % is the acceptance band

# The GEMM timing is checked against held-out measurements in tests/ep/test_calibration.py (the
# bottom-up model is fitted on one of them only); this file checks the inputs and the placements.


def test_fixed_costs_are_npu_md_figures():
    assert 2 * NPU1.design_switch_s == pytest.approx(2.81e-3, rel=1e-9)  # per pair of switches
    assert NPU1.context_create_s == pytest.approx(2.5e-3)
    assert 45e-6 <= NPU1.launch_s <= 60e-6 * (1 + TOLERANCE)
    assert 55e9 <= NPU1.host_device_bytes_per_s <= 66e9
    assert NPU1.hw_contexts == 6 and NPU2.hw_contexts == 16
    assert NPU1.driver_timeout_s == 2.0


def test_profiles_by_name_and_a_clear_error_for_an_unknown_one():
    assert set(PROFILES) == {"npu1", "npu2"}
    assert get_profile("npu2") is NPU2
    assert get_profile(NPU1) is NPU1
    with pytest.raises(ValueError, match=r"unknown NPU profile 'npu3': valid profiles are npu1, npu2"):
        get_profile("npu3")
    with pytest.raises(ValueError, match=r"unknown precision 'fp16'"):
        cost_model.estimate_matmul(NPU1, 1, 1, 1, precision="fp16")


def test_padding_follows_the_whole_array_constraints():
    assert cost_model.padded_gemm_shape(NPU1, 1500, 384, 384) == (1536, 384, 384)
    assert cost_model.padded_gemm_shape(NPU1, 1, 80, 51864) == (256, 128, 51968)
    assert cost_model.padded_gemm_shape(NPU2, 1500, 512, 512) == (1536, 512, 512)  # N multiple of 8 x 32


@pytest.mark.parametrize("d_model", [384, 512])  # tiny.en, base
def test_single_token_decoder_matmuls_stay_on_the_cpu(d_model):
    for k, n in ((d_model, d_model), (d_model, 4 * d_model), (4 * d_model, d_model), (d_model, 51865)):
        estimate = cost_model.estimate_matmul(NPU1, 1, k, n)
        assert estimate.placement == "cpu", (k, n, estimate.reason)
    assert cost_model.estimate_attention(NPU1, 1, d_model // 64, 1, 24, 64).placement == "cpu"
    assert cost_model.estimate_attention(NPU1, 1, d_model // 64, 1, 1500, 64).placement == "cpu"


@pytest.mark.parametrize("d_model", [384, 512])
def test_encoder_matmuls_and_attention_go_to_the_npu(d_model):
    for k, n in ((d_model, d_model), (d_model, 4 * d_model), (4 * d_model, d_model)):
        estimate = cost_model.estimate_matmul(NPU1, 1500, k, n, bias=True)
        assert estimate.placement == "npu", (k, n, estimate.reason)
        assert estimate.launches == 1
    attention = cost_model.estimate_attention(NPU1, 1, d_model // 64, 1500, 1500, 64)
    assert attention.placement == "npu" and attention.launches == 1


def test_estimate_counts_activations_only_and_the_accurate_precision_triples_k():
    bf16 = cost_model.estimate_matmul(NPU1, 1500, 384, 384)
    accurate = cost_model.estimate_matmul(NPU1, 1500, 384, 384, precision="accurate")
    assert bf16.bytes_to_device == 1500 * 384 * 2  # real rows of bf16 activations; the weight is resident
    assert bf16.bytes_from_device == 1500 * 384 * 4
    assert accurate.bytes_to_device == 3 * bf16.bytes_to_device
    assert accurate.design == "xdna_matmul_k1152_npu1" and bf16.design == "xdna_matmul_k384_npu1"
    assert accurate.padded_flops == 3 * bf16.padded_flops
    assert "NPU" in bf16.reason and "CPU" in bf16.reason


def test_a_launch_that_would_near_the_driver_timeout_is_split():
    huge = cost_model.estimate_matmul(NPU1, 30000, 8192, 8192)
    assert huge.compute_s > NPU1.driver_timeout_s
    assert huge.launches == pytest.approx(huge.compute_s / (NPU1.driver_timeout_s / 2), abs=1)
