"""The design set, its hardware-context plan, and the CMake build of the NPU artifacts."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from xdna_ep.kernels.designs import Design, build_list, cmake_lines, encoder_designs, plan
from xdna_ep.kernels.matmul.spec import MatmulSpec

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("d_model", "n_head", "names"), [
    (384, 6, ["xdna_matmul_k384_npu1", "xdna_matmul_k1536_npu1", "xdna_attention_d64_bf16_npu1"]),
    (512, 8, ["xdna_matmul_k512_npu1", "xdna_matmul_k2048_npu1", "xdna_attention_d64_bf16_npu1"]),
])  # fmt: skip
def test_an_encoder_needs_one_gemm_design_per_k_and_one_attention_design(d_model, n_head, names):
    designs = plan(encoder_designs(d_model, n_head, "npu1", "bf16"), "npu1")
    assert [design.spec.name for design in designs] == names
    gemm_k = designs[0]
    assert gemm_k.shapes == ((1536, d_model), (1536, 4 * d_model))  # q/k/v/out and fc1 share K = d_model


def test_accurate_precision_uses_the_gemm_design_of_three_times_k():
    designs = encoder_designs(384, 6, "npu1", "accurate")
    assert [design.spec.name for design in designs][:2] == ["xdna_matmul_k1152_npu1", "xdna_matmul_k4608_npu1"]


def test_more_designs_than_hardware_contexts_is_a_planning_error():
    designs = [Design(MatmulSpec(k=64 * i), ((256, 128),)) for i in range(1, 8)]
    with pytest.raises(ValueError, match=r"planning error: 7 designs .* npu1 has 6"):
        plan(designs, "npu1")
    assert len(plan(designs, "npu2")) == 7  # Strix has 16


def test_cmake_build_list_names_every_xclbin_and_instruction_stream():
    designs = build_list("npu1", ("bf16",))
    lines = cmake_lines(designs)
    assert len(lines) == sum(len(design.shapes) for design in designs)
    fields = lines[0].split("|")
    assert len(fields) == 10 and fields[1] == "matmul" and fields[7] == "xdna_matmul_k384_npu1.xclbin"
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
