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


def test_npu2_keeps_the_time_shared_array_too():
    # npu2 has twice the columns, so half of them cost tiny.en's compute twice (modelled 28.3 ms) against
    # the 8 switches of the time-shared plan (25.4 ms in all)
    plan = plan_encoder_switches(384, 6, 4, "npu2")
    assert plan.choice == "time-shared" and plan.split_s > plan.time_shared_s


def test_the_split_wins_when_switches_outweigh_the_lost_columns(monkeypatch):
    # a device whose switches cost ten times npu2's: 8 switches then outweigh running on half the columns
    import dataclasses

    from xdna_ep.kernels import designs

    costly = dataclasses.replace(NPU2, design_switch_s=10 * NPU2.design_switch_s)
    monkeypatch.setattr(designs, "get_profile", lambda name: costly)
    plan = designs.plan_encoder_switches(384, 6, 4, "npu2")
    assert plan.choice == "split" and plan.split_s < plan.time_shared_s
    assert plan.reason.startswith("split: ")
