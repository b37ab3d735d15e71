"""The kernels' fp32 exp (``kernels/common/exp_f32.h``), compiled for the host and checked against
libm over the whole range softmax statistics use."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

KERNELS = Path(__file__).resolve().parents[2] / "kernels"

HARNESS = r"""
#include <cmath>
#include <cstdio>
#include "common/exp_f32.h"
int main() {
  double worst = 0.0;
  for (float x = -87.0f; x < 88.0f; x += 0.0007f) {
    const double exact = std::exp((double)x);
    const double error = std::fabs((double)xdna_exp_f32(x) - exact) / exact;
    if (error > worst) worst = error;
  }
  std::printf("%.3e %g %g\n", worst, (double)xdna_exp_f32(-100.0f), (double)xdna_exp_f32(0.0f));
}
"""


@pytest.mark.skipif(shutil.which("g++") is None, reason="no host C++ compiler (g++)")
def test_exp_f32_is_accurate_to_fp32(tmp_path):
    source = tmp_path / "exp_test.cc"
    source.write_text(HARNESS)
    binary = tmp_path / "exp_test"
    subprocess.run(["g++", "-O2", "-std=c++17", "-I", str(KERNELS), str(source), "-o", str(binary)], check=True)
    output = subprocess.run([str(binary)], capture_output=True, text=True, check=True).stdout
    worst, below_range, at_zero = (float(value) for value in output.split())
    assert worst < 2e-7  # about one fp32 ulp
    assert below_range == 0.0 and at_zero == 1.0
