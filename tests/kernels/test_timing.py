"""The timing walk over a design's dataflow description (``kernels/timing.py`` ``flow_time``): object
counts from the runtime sequence, kernel calls per step, each step against its busiest shim channel."""

from __future__ import annotations

import dataclasses

import pytest

from xdna_ep.ep import cost_model
from xdna_ep.ep.device import NPU1, NPU2
from xdna_ep.kernels.attention import cycles as attention_cycles
from xdna_ep.kernels.attention.design import describe as describe_attention
from xdna_ep.kernels.attention.spec import AttentionSpec
from xdna_ep.kernels.dataflow import AccessPattern, Fifo, HostArg, Tile, Transfer
from xdna_ep.kernels.matmul import cycles as matmul_cycles
from xdna_ep.kernels.matmul.design import describe as describe_matmul
from xdna_ep.kernels.matmul.spec import MatmulSpec
from xdna_ep.kernels.timing import flow_time, object_counts

Q_ROWS, KV_TILE = cost_model.ATTENTION_Q_ROWS_PER_CORE, cost_model.ATTENTION_KV_TILE


def attention_time(flow, spec, profile=NPU1):
    return flow_time(flow, attention_cycles.call_cycles(profile, spec, Q_ROWS, KV_TILE), profile)


def test_object_counts_follow_the_runtime_sequence_and_the_links():
    spec = MatmulSpec(k=None)
    m, k, n = spec.tile
    M, K, N = 512, 192, 256  # 2 row blocks of 4 x 64 rows, 3 K tiles, 2 column blocks of 4 x 32
    counts = object_counts(describe_matmul(spec, M, K, N))
    output_tiles = (M // (4 * m)) * (N // (4 * n))
    assert counts["A_L1_0"] == output_tiles * K // k  # one A object per K step of every output tile
    assert counts["B_L1_0"] == output_tiles * (K // k + 1)  # ... and each output tile's params object
    assert counts["C_L1_0_0"] == output_tiles


def test_one_more_key_tile_adds_one_inner_step_per_query_tile():
    spec = AttentionSpec(head_dim=64)
    n_q = NPU1.cores * Q_ROWS
    short = attention_time(describe_attention(spec, 2, n_q, 20 * KV_TILE), spec)
    longer = attention_time(describe_attention(spec, 2, n_q, 21 * KV_TILE), spec)
    inner = longer.steps[-1].tile.fill_cycles - short.steps[-1].tile.fill_cycles  # per query tile
    step = attention_cycles.call_cycles(NPU1, spec, Q_ROWS, KV_TILE)[spec.c_symbol].cycles
    kv_bytes = 2 * KV_TILE * 64 * 2  # one key/value object: k and v share the stream
    assert inner == pytest.approx(max(step, kv_bytes / NPU1.shim_bytes_per_cycle), rel=1e-12)
    assert longer.cycles - short.cycles == pytest.approx(2 * inner, rel=1e-12)  # 2 heads x 1 round


def test_more_dma_bytes_on_a_channel_make_its_steps_dma_bound():
    # the GEMM's K step is paced by the A channel (m x k bf16 per step); a design that also streams a
    # third input of 4 x the A bytes per K step on another channel is paced by that one
    spec = MatmulSpec(k=None)
    flow = describe_matmul(spec, 256, 640, 128)
    base = matmul_cycles.call_cycles(NPU1, spec)
    before = flow_time(flow, base, NPU1)
    m, k, _ = spec.tile
    k_steps = 640 // k
    extra = 4 * m * k * k_steps  # bf16 elements: 4 x A's bytes per K step
    changed = dataclasses.replace(
        flow,
        args=(*flow.args, HostArg("extra", "bf16", extra, "in")),
        fifos=(*flow.fifos, Fifo("EXTRA_0", Tile(0, 0), (Tile(0, 1),), 2, "bf16", (1024,))),
        transfers=(*flow.transfers, Transfer(Tile(0, 0), "EXTRA_0", "extra", "fill", AccessPattern(0, (extra // 1024, 1024), (1024, 1)), 0)),
    )  # fmt: skip
    after = flow_time(changed, base, NPU1)
    extra_cycles = extra * 2 / k_steps / NPU1.shim_bytes_per_cycle  # per K step
    core = base[spec.c_symbol].cycles
    a_cycles = m * k * 2 / NPU1.shim_bytes_per_cycle
    assert extra_cycles > max(core, a_cycles)
    assert after.cycles - before.cycles == pytest.approx(k_steps * (extra_cycles - max(core, a_cycles)) + extra_cycles - a_cycles, rel=1e-9)


@pytest.mark.parametrize("profile", [NPU1, NPU2])
def test_the_cost_model_times_the_description_of_the_padded_shape(profile):
    # the partitioner's figure is the same walk over the description the simulator would execute
    m, k, n = cost_model.padded_gemm_shape(profile, 1500, 384, 1536)
    spec = MatmulSpec(k=None, profile=profile.name)
    walked = flow_time(describe_matmul(spec, m, k, n), matmul_cycles.call_cycles(profile, spec, gelu=True), profile)
    assert cost_model.gemm_compute_s(profile, m, k, n, gelu=True) == pytest.approx(walked.seconds, rel=1e-12)


def test_a_call_without_a_cycle_model_is_refused():
    spec = MatmulSpec(k=None)
    calls = matmul_cycles.call_cycles(NPU1, spec)
    del calls[spec.epilogue_symbol]
    with pytest.raises(ValueError, match="no cycle model .*xdna_bias_gelu_f32"):
        flow_time(describe_matmul(spec, 256, 64, 128), calls, NPU1)


def test_a_single_buffered_key_value_fifo_pays_its_transfer_after_each_step():
    # the accurate variant single-buffers its key/value tiles to fit 64 KB: each step waits for its object
    spec = AttentionSpec(head_dim=64, precision="accurate")
    flow = describe_attention(spec, 1, NPU1.cores * Q_ROWS, 4 * KV_TILE)
    assert all(f.depth == 1 for f in flow.fifos if f.name.startswith("KV_L1_"))
    double = dataclasses.replace(flow, fifos=tuple(dataclasses.replace(f, depth=2) if f.name.startswith("KV_L1_") else f for f in flow.fifos))
    single_time, double_time = attention_time(flow, spec), attention_time(double, spec)
    kv_cycles = 2 * 2 * KV_TILE * 64 * 2 / NPU1.shim_bytes_per_cycle  # (k, v) x (hi, lo) bf16 per step
    step = attention_cycles.call_cycles(NPU1, spec, Q_ROWS, KV_TILE)[spec.c_symbol].cycles
    assert step > kv_cycles  # compute-bound when overlapped
    assert single_time.cycles - double_time.cycles == pytest.approx(4 * kv_cycles, rel=1e-9)  # 4 key tiles, 1 round
