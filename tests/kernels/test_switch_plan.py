"""Sharing the array between the encoder's GEMM and attention designs (kernels/designs.py)."""

from __future__ import annotations

from xdna_ep.ep.device import NPU1, NPU2
from xdna_ep.kernels.designs import combined_tile_bytes, plan_encoder_switches


def test_one_xclbin_for_gemm_and_attention_does_not_fit_a_tile():
    # the two designs' buffers together: far past the 64 KB of a compute tile on either generation
    assert combined_tile_bytes("npu1") > NPU1.tile_data_bytes
    assert combined_tile_bytes("npu2") > NPU2.tile_data_bytes


def test_tiny_en_on_npu1_keeps_the_time_shared_array_and_says_why():
    plan = plan_encoder_switches(384, 6, 4, "npu1")
    assert plan.switches == 8
    # half the columns each doubles every design's time, more than the 8 switches (11.2 ms) cost
    assert plan.split_s > plan.time_shared_s and plan.choice == "time-shared"
    assert plan.reason.startswith("time-shared: time-shared ") and "8 switches" in plan.reason
    assert "KB per tile of 64 KB" in plan.reason


def test_the_split_wins_when_switches_outweigh_the_lost_columns():
    # npu2 (8 columns, switches as costly as on npu1): tiny.en's compute is small enough that two
    # resident half-array designs model cheaper than 8 switches
    plan = plan_encoder_switches(384, 6, 4, "npu2")
    assert plan.choice == "split" and plan.split_s < plan.time_shared_s
