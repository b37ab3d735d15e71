"""The hardware-limit verifier: every planned design passes on npu1 and npu2, and a design that breaks
exactly one rule is refused with that rule named."""

from __future__ import annotations

import dataclasses
import json

import pytest

from xdna_ep import designs as designs_cli
from xdna_ep.kernels import check
from xdna_ep.kernels.attention.spec import AttentionSpec
from xdna_ep.kernels.dataflow import AccessPattern, Fifo, KernelCall, LocalBuffer, Tile, Transfer
from xdna_ep.kernels.designs import describe
from xdna_ep.kernels.limits import NPU1
from xdna_ep.kernels.matmul.spec import MatmulSpec
from xdna_ep.kernels.softmax.spec import SoftmaxSpec
from xdna_ep.kernels.verify import verify


@pytest.mark.parametrize("profile", ["npu1", "npu2"])
def test_every_planned_design_fits_the_hardware(profile, capsys):
    reports = check.check(profile)
    names = {report.name.split(":")[0] for report in reports}
    assert names == {f"xdna_matmul_kdyn_{profile}", f"xdna_attention_d64_bf16_{profile}",
                     f"xdna_attention_d64_accurate_{profile}", f"xdna_softmax_c1504_{profile}"}  # fmt: skip
    assert [report.violations for report in reports if not report.ok] == []
    assert designs_cli.run_command(type("Args", (), {"action": "check", "profile": profile, "json": True})()) == 0
    listed = json.loads(capsys.readouterr().out)
    assert len(listed) == len(reports)
    assert set(listed[0]) == {"name", "resources", "violations"}
    assert set(listed[0]["resources"][0]) == {"tile", "resource", "used", "limit"}


def small_softmax():
    """A small real design (softmax, 64 columns, 32 rows) that passes, for the rules to break."""
    flow = describe(SoftmaxSpec(cols=64, profile="npu1"), (32,))
    assert verify(flow).ok
    return flow


def small_gemm(profile="npu1"):
    flow = describe(MatmulSpec(k=None, profile=profile), (256, 128, 128 if profile == "npu1" else 256))
    assert verify(flow).ok
    return flow


def only_violation(flow, limits=None) -> str:
    violations = verify(flow, limits).violations
    assert len(violations) == 1, violations
    return violations[0]


def test_a_third_input_stream_into_a_core_is_refused_by_dma_in():
    # the old GEMM's P stream: shim -> core, a third S2MM on every core of the column
    flow = small_gemm()
    params = Fifo("P_0", Tile(0, 0), (Tile(0, 2),), 2, "f32", (48,))
    flow = dataclasses.replace(flow, fifos=(*flow.fifos, params))
    assert "compute(0,2): dma_in 3 > limit 2" in only_violation(flow, dataclasses.replace(NPU1, shim=dataclasses.replace(NPU1.shim, dma_out=3)))


def test_a_third_output_stream_from_a_shim_is_refused_by_dma_out():
    flow = small_softmax()
    extra = Fifo("Z_0", Tile(0, 0), (Tile(0, 1),), 1, "f32", (16,))
    flow = dataclasses.replace(flow, fifos=(*flow.fifos, extra))
    assert "shim(0,0): dma_out 3 > limit 2" in only_violation(flow)


def test_seventeen_transfers_in_flight_on_a_shim_are_refused_by_buffer_descriptors():
    flow = small_softmax()
    fill = next(t for t in flow.transfers if t.fifo == "X_0")
    flow = dataclasses.replace(flow, transfers=(*flow.transfers, *[fill] * 14))  # 3 + 14 in group 0
    assert "shim(0,0): buffer_descriptors 17 > limit 16" in only_violation(flow)


def test_more_fifo_ends_than_lock_pairs_are_refused_by_locks():
    flow = small_softmax()
    deep = [Fifo(f"E_{i}", Tile(0, 1), (Tile(0, 2),), 1, "f32", (16,)) for i in range(6)]
    relaxed = dataclasses.replace(NPU1, compute=dataclasses.replace(NPU1.compute, dma_in=8),
                                  memtile=dataclasses.replace(NPU1.memtile, dma_out=12))  # fmt: skip
    assert "compute(0,2): locks 18 > limit 16" in only_violation(dataclasses.replace(flow, fifos=(*flow.fifos, *deep)), relaxed)


def test_a_core_over_64_kb_is_refused_by_data_memory():
    flow = small_softmax()
    big = LocalBuffer(Tile(1, 3), "scores", "f32", 16 * 1024 - 300)  # + 2.3 KB of FIFOs and stack: over 64 KB
    assert "compute(1,3): data_memory" in only_violation(dataclasses.replace(flow, buffers=(*flow.buffers, big)))


def test_the_old_attention_tiles_do_not_fit_64_kb():
    # key tile 64 (as before this change) with double-buffered hi + lo key/value tiles: about 84 KB
    flow = describe(AttentionSpec(head_dim=64, precision="accurate"), (1, 512, 64))
    kv = next(f for f in flow.fifos if f.name == "KV_L1_0")
    wider = dataclasses.replace(kv, depth=2, shape=(2 * kv.elements,))
    fifos = tuple(wider if f.name == "KV_L1_0" else f for f in flow.fifos)
    violations = verify(dataclasses.replace(flow, fifos=fifos)).violations
    assert violations and all("data_memory" in v and "compute(0," in v for v in violations), violations


def test_a_memtile_object_too_big_is_refused_by_data_memory():
    flow = small_softmax()
    # X and Y column objects of 4 x 20000 f32, double-buffered: 2 x 2 x 320000 bytes
    fifos = tuple(dataclasses.replace(f, shape=(4, 20000)) if f.name in ("X_0", "Y_0") else f for f in flow.fifos)
    flow = dataclasses.replace(flow, fifos=fifos, transfers=tuple(t for t in flow.transfers if t.tile != Tile(0, 0)))
    assert "memtile(0,1): data_memory 1280000 > limit 524288" in only_violation(flow)


def test_a_reordering_with_a_wrap_over_1023_is_refused_by_bd_dims():
    flow = small_gemm()
    fifo = next(f for f in flow.fifos if f.name == "B_L1_0")
    k, n = fifo.shape
    bad = dataclasses.replace(fifo, dims=AccessPattern(0, (1, k * n), (k * n, 1)))
    flow = dataclasses.replace(flow, fifos=tuple(bad if f.name == "B_L1_0" else f for f in flow.fifos))
    assert "memtile(0,1): bd_dims of FIFO B_L1_0: Size may not exceed 1023." in only_violation(flow)


def test_a_tile_outside_the_array_is_refused_by_placement():
    flow = small_softmax()
    core = dataclasses.replace(flow.cores[0], tile=Tile(4, 2))
    assert "compute(4,2): placement outside the 4 x 4 array of npu1" in only_violation(
        dataclasses.replace(flow, cores=(*flow.cores, core))
    )


def test_the_old_gemm_b_pattern_is_refused_by_access_pattern():
    # one contiguous K * n column block per BD dimension while blocks stride: d0 over 1023 words
    flow = describe(MatmulSpec(k=None, profile="npu1"), (256, 128, 256))  # two column blocks per column
    fill = next(t for t in flow.transfers if t.fifo == "B_0")
    k_rows_n = flow.arg("b").elements // (256 // 32)  # (K + k) * n bf16 = 3072 words
    old = dataclasses.replace(fill, pattern=AccessPattern(0, (1, 1, 2, k_rows_n), (0, 0, 4 * k_rows_n, 1)))
    flow = dataclasses.replace(flow, transfers=tuple(old if t is fill else t for t in flow.transfers))
    assert "access_pattern of fill b -> B_0: Size 0 exceeds the [0:1023] range." in only_violation(flow)


def test_a_pattern_past_the_end_of_its_buffer_is_refused_by_access_pattern():
    flow = small_softmax()
    fill = next(t for t in flow.transfers if t.fifo == "X_3")
    moved = dataclasses.replace(fill, pattern=dataclasses.replace(fill.pattern, offset=fill.pattern.offset + 64))
    flow = dataclasses.replace(flow, transfers=tuple(moved if t is fill else t for t in flow.transfers))
    assert "access_pattern of fill x: element 2111 is outside the 2048-element buffer" in only_violation(flow)


def test_an_index_passed_to_an_i32_parameter_is_refused_by_kernel_types():
    flow = describe(AttentionSpec(head_dim=64), (1, 512, 64))
    core = flow.cores[0]
    init = next(c for c in core.calls if c.symbol == "xdna_attention_init")
    uncast = KernelCall(init.symbol, init.declared, ("f32[]", "index"), init.per)
    core = dataclasses.replace(core, calls=tuple(uncast if c is init else c for c in core.calls))
    flow = dataclasses.replace(flow, cores=(core, *flow.cores[1:]))
    assert "kernel_types: xdna_attention_init argument 1 is declared i32, the core passes index" in only_violation(flow)


def test_the_npu1_mmul_shape_on_npu2_is_refused_by_mmul_shape():
    flow = small_gemm("npu2")
    core = flow.cores[0]
    defines = tuple((name, {"MMUL_R": 4, "MMUL_S": 8, "MMUL_T": 4}.get(name, value)) for name, value in core.defines)
    flow = dataclasses.replace(flow, cores=(dataclasses.replace(core, defines=defines), *flow.cores[1:]))
    assert "compute(0,2): mmul_shape 4x8x4, npu2 has 8x8x8" in only_violation(flow)


def test_a_transfer_of_part_of_an_object_is_refused_by_object_size():
    flow = small_softmax()
    fill = next(t for t in flow.transfers if t.fifo == "P_0")
    half = dataclasses.replace(fill, pattern=AccessPattern(0, (8,), (1,)))
    flow = dataclasses.replace(flow, transfers=tuple(half if t is fill else t for t in flow.transfers))
    assert "object_size: fill params moves 32 bytes, not whole 64-byte objects of P_0" in only_violation(flow)


def test_the_cli_exits_1_naming_design_tile_and_limit(monkeypatch, capsys):
    broken = small_softmax()
    broken = dataclasses.replace(broken, buffers=(*broken.buffers, LocalBuffer(Tile(0, 2), "big", "f32", 16384)))
    monkeypatch.setattr(check, "check", lambda profile: [verify(broken)])
    assert designs_cli.run_command(type("Args", (), {"action": "check", "profile": "npu1", "json": False})()) == 1
    out = capsys.readouterr().out
    assert "VIOLATION xdna_softmax_c64_npu1:32: compute(0,2): data_memory" in out and "> limit 65536" in out
