"""The design set, its hardware-context plan, and the CMake build of the NPU artifacts."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from xdna_ep.ep.device import NPU1
from xdna_ep.kernels.designs import (
    Design,
    build_list,
    cmake_lines,
    encoder_designs,
    plan,
    plan_gemms,
    switches_per_pass,
)
from xdna_ep.kernels.matmul.spec import MatmulSpec

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("d_model", "n_head", "shapes"), [
    (384, 6, ((1536, 384, 384), (1536, 384, 1536), (1536, 1536, 384))),
    (512, 8, ((1536, 512, 512), (1536, 512, 2048), (1536, 2048, 512))),
])  # fmt: skip
def test_an_encoder_runs_its_gemms_on_one_dynamic_k_design_and_one_attention_design(d_model, n_head, shapes):
    designs = plan(encoder_designs(d_model, n_head, "npu1", "bf16"), "npu1")
    assert [design.spec.name for design in designs] == ["xdna_matmul_kdyn_npu1", "xdna_attention_d64_bf16_npu1"]
    assert designs[0].shapes == shapes  # one instruction stream per (M, K, N): q/k/v/out, fc1, fc2


def test_accurate_precision_runs_three_times_k_on_the_same_dynamic_k_design():
    designs = encoder_designs(384, 6, "npu1", "accurate")
    assert designs[0].spec.name == "xdna_matmul_kdyn_npu1"
    assert designs[0].shapes == ((1536, 1152, 384), (1536, 1152, 1536), (1536, 4608, 384))


def _encoder_layer(d_model: int) -> list[str]:
    """Designs of one encoder layer's launches, GEMMs named per K as the cost model names them."""
    gemms = [f"xdna_matmul_k{k}_npu1" for k in (d_model,) * 5 + (4 * d_model,)]
    return gemms[:3] + ["xdna_attention_d64_bf16_npu1"] + gemms[3:]


@pytest.mark.parametrize(("d_model", "n_layer"), [(384, 4), (512, 6)])  # tiny.en, base
def test_planner_picks_the_dynamic_k_design_for_a_whisper_encoder_because_it_models_cheaper(d_model, n_layer):
    gemm_plan = plan_gemms(_encoder_layer(d_model) * n_layer, "npu1")
    assert gemm_plan.dynamic_k
    # per layer: K=d -> attention -> K=d -> K=4d -> next layer's K=d, against GEMM -> attention -> GEMM
    assert (gemm_plan.per_k_switches, gemm_plan.dynamic_switches) == (4 * n_layer, 2 * n_layer)
    assert gemm_plan.switches == 2 * n_layer and gemm_plan.gemm_launches == 6 * n_layer
    assert gemm_plan.per_k_s == pytest.approx(4 * n_layer * NPU1.design_switch_s, rel=1e-12)
    expected = 2 * n_layer * NPU1.design_switch_s + 6 * n_layer * NPU1.runtime_parameters_s
    assert gemm_plan.dynamic_s == pytest.approx(expected, rel=1e-12)
    assert gemm_plan.dynamic_s < gemm_plan.per_k_s
    assert gemm_plan.designs == ("xdna_matmul_kdyn_npu1", "xdna_attention_d64_bf16_npu1")
    assert gemm_plan.reason.startswith("one dynamic-K GEMM design: 2 designs, ")
    assert gemm_plan.gemm_spec(4 * d_model) == MatmulSpec(k=None)


def test_planner_keeps_one_design_per_k_when_there_are_no_switches_to_save():
    # one K only (a decoder's cross-attention K/V projections): runtime parameters would be pure cost
    gemm_plan = plan_gemms(["xdna_matmul_k384_npu1"] * 8, "npu1")
    assert not gemm_plan.dynamic_k
    assert gemm_plan.per_k_switches == gemm_plan.dynamic_switches == 0
    assert gemm_plan.dynamic_s == pytest.approx(8 * NPU1.runtime_parameters_s, rel=1e-12)
    assert gemm_plan.reason.startswith("one GEMM design per K: 1 design, 0 switches")
    assert gemm_plan.gemm_spec(384) == MatmulSpec(k=384)
    assert not plan_gemms(["xdna_attention_d64_bf16_npu1"], "npu1").dynamic_k  # no GEMM at all


def test_planner_takes_the_dynamic_design_when_one_design_per_k_would_not_fit_the_contexts():
    # 7 Ks, 100 launches each in a row: 7 switches (9.8 ms) against 700 x 15 us of runtime parameters
    # (10.5 ms) would favour one design per K, but 7 designs need 7 hardware contexts
    launches = [f"xdna_matmul_k{64 * i}_npu1" for i in range(1, 8) for _ in range(100)]
    gemm_plan = plan_gemms(launches, "npu1")
    assert gemm_plan.dynamic_s > gemm_plan.per_k_s
    assert gemm_plan.dynamic_k and gemm_plan.designs == ("xdna_matmul_kdyn_npu1",)
    assert "one per K needs 7 hardware contexts, npu1 has 6" in gemm_plan.reason


def test_switches_per_pass_count_the_wrap_around_to_the_next_pass():
    assert switches_per_pass(["a", "a", "b"]) == 2  # a -> b, and b -> the next pass's a
    assert switches_per_pass(["a", "a"]) == 0
    assert switches_per_pass([]) == 0


def test_more_designs_than_hardware_contexts_is_a_planning_error():
    designs = [Design(MatmulSpec(k=64 * i), ((256, 64 * i, 128),)) for i in range(1, 8)]
    with pytest.raises(ValueError, match=r"planning error: 7 designs .* npu1 has 6"):
        plan(designs, "npu1")
    assert len(plan(designs, "npu2")) == 7  # Strix has 16


def test_cmake_build_list_names_every_xclbin_and_instruction_stream():
    designs = build_list("npu1", ("bf16",))
    lines = cmake_lines(designs)
    assert len(lines) == sum(len(design.shapes) for design in designs)
    fields = lines[0].split("|")
    assert len(fields) == 10 and fields[1] == "matmul" and fields[7] == "xdna_matmul_kdyn_npu1.xclbin"
    assert fields[6].endswith(",--dynamic-k") and fields[8] == "xdna_matmul_kdyn_npu1_m1536_k384_n384.insts.bin"
    assert (ROOT / "kernels" / fields[2]).is_file() and (ROOT / "kernels" / fields[5]).is_file()
    assert sum(line.endswith("|1") for line in lines) == len(designs)  # one xclbin per design


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not installed")
def test_cmake_configures_and_says_what_it_skipped_without_the_toolchain(tmp_path):
    result = subprocess.run(
        ["cmake", "-S", str(ROOT), "-B", str(tmp_path / "build"), f"-DPython3_EXECUTABLE={sys.executable}"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    if "MLIR-AIE /" in result.stdout:
        pytest.skip("the MLIR-AIE toolchain is installed here: the build, not the skip, applies")
    assert "xdna-ep: skipping the NPU kernels" in result.stdout
    assert "MLIR-AIE not found" in result.stdout
