"""The AIE C++ kernels, compiled for the host against a stand-in of the AIE API
(``tests/kernels/aie_host/aie_api/aie.hpp``: exact fp32 lanes, bf16 rounded to nearest even, mmul
accumulating in fp32) and run tile by tile against their NumPy references.

This checks the kernels' arithmetic and data layout (blocking, masking, online softmax, epilogue),
not the AIE compiler or the real aie_api: the device emulates fp32 multiplies with bf16 products
(UG1603), which the stand-in does not model. No MLIR-AIE toolchain is needed: g++ only (always
installed where the tests run).
"""

from __future__ import annotations

import ctypes
import subprocess
from pathlib import Path

import numpy as np
import pytest

from xdna_ep.ep import cost_model
from xdna_ep.kernels.attention import reference as attention_reference
from xdna_ep.kernels.attention import spec as attention_spec
from xdna_ep.kernels.bf16 import from_bf16_bits, to_bf16_bits
from xdna_ep.kernels.matmul import reference as matmul_reference
from xdna_ep.kernels.softmax import reference as softmax_reference

HERE = Path(__file__).resolve().parent
KERNELS = HERE.parents[1] / "kernels"
STUB = HERE / "aie_host"
Q_ROWS, KV_TILE = cost_model.ATTENTION_Q_ROWS_PER_CORE, cost_model.ATTENTION_KV_TILE  # the design's tiles
HEAD_DIM = 64  # every Whisper size
M_TILE, K_TILE, N_TILE = 64, 64, 32  # npu1 whole-array GEMM tile
R, S, T = 4, 8, 4  # npu1 bf16 aie::mmul


def build(tmp_path_factory, source: str, defines: list[str]) -> ctypes.CDLL:
    out = tmp_path_factory.mktemp("kernels") / (Path(source).stem + "_".join(["", *defines]).replace("=", "") + ".so")
    subprocess.run(
        ["g++", "-O1", "-std=c++20", "-shared", "-fPIC", "-I", str(STUB), "-I", str(KERNELS), *defines,
         str(KERNELS / source), "-o", str(out)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return ctypes.CDLL(str(out))


def ptr(array: np.ndarray) -> ctypes.c_void_p:
    assert array.flags.c_contiguous
    return ctypes.c_void_p(array.ctypes.data)


@pytest.fixture(scope="module")
def attention_libs(tmp_path_factory):
    """One object per precision, as CMakeLists.txt builds them (kernels/designs.py compile_defines)."""
    common = [f"-DHEAD_DIM={HEAD_DIM}", f"-DQ_ROWS={Q_ROWS}", f"-DKV_TILE={KV_TILE}", f"-DMMUL_R={R}",
              f"-DMMUL_S={S}", f"-DMMUL_T={T}"]  # fmt: skip
    return {"bf16": build(tmp_path_factory, "attention/attention.cc", common),
            "accurate": build(tmp_path_factory, "attention/attention.cc", [*common, "-DXDNA_ACCURATE"])}  # fmt: skip


@pytest.fixture(scope="module")
def softmax_lib(tmp_path_factory):
    return build(tmp_path_factory, "softmax/softmax.cc", [])


@pytest.fixture(scope="module")
def matmul_lib(tmp_path_factory):
    return build(tmp_path_factory, "matmul/matmul.cc", [f"-DDIM_M={M_TILE}", f"-DDIM_K={K_TILE}", f"-DDIM_N={N_TILE}"])


NPU2_MMUL = (8, 8, 8)  # AIE2P bf16 aie::mmul (kernels/designs.py passes it as MMUL_R/S/T for npu2)


def run_attention_tile(lib, q_bits, k_bits, v_bits, params, q_row0: int, precision: str) -> np.ndarray:
    """One core's query tile as the design runs it: the params header object into state, init, one step per
    key/value object ([(k, v), parts, KV_TILE, d], as design.pack_kv lays them out), finish.
    *_bits: [parts, rows, d] uint16."""
    parts = q_bits.shape[0]
    state = np.zeros(Q_ROWS * HEAD_DIM + 2 * Q_ROWS + 2 + attention_spec.PARAMS_WORDS, dtype=np.float32)
    out = np.zeros((Q_ROWS, HEAD_DIM), dtype=np.float32)
    header = np.zeros(parts * Q_ROWS * HEAD_DIM // 2, dtype=np.float32)  # one query-tile object of bf16
    header[: params.size] = params
    lib.xdna_attention_params(ptr(header.view(np.uint16)), ptr(state))
    step = getattr(lib, f"xdna_attention_step_{precision}")
    lib.xdna_attention_init(ptr(state), ctypes.c_int32(q_row0))
    q_tile = np.ascontiguousarray(q_bits[:, q_row0 : q_row0 + Q_ROWS])
    for key0 in range(0, k_bits.shape[1], KV_TILE):
        kv_tile = np.ascontiguousarray(np.stack([k_bits[:, key0 : key0 + KV_TILE], v_bits[:, key0 : key0 + KV_TILE]]))
        step(ptr(q_tile), ptr(kv_tile), ptr(state))
    lib.xdna_attention_finish(ptr(state), ptr(out))
    assert parts in (1, 2)
    return out


@pytest.mark.parametrize(
    ("precision", "causal", "n_q", "n_kv", "tolerance"),
    [
        # bf16: p is rounded to bf16 against the running max (online) where the reference rounds it
        # against the final max: measured worst 3.9e-4 / 7.1e-4 (causal) of the output's scale
        ("bf16", False, 64, 150, 1.5e-3),
        ("bf16", True, 64, 150, 1.5e-3),
        # accurate: hi + lo parts, three products: measured worst 4.3e-6 / 4.0e-6
        ("accurate", False, 64, 150, 1e-5),
        ("accurate", True, 64, 150, 1e-5),
    ],
)
def test_attention_kernel_matches_the_reference(attention_libs, precision, causal, n_q, n_kv, tolerance):
    attention_lib = attention_libs[precision]
    rng = np.random.default_rng(7)
    n_kv_pad = -(-n_kv // KV_TILE) * KV_TILE
    q = rng.standard_normal((1, n_q, HEAD_DIM), dtype=np.float32) * 2
    k = rng.standard_normal((1, n_kv, HEAD_DIM), dtype=np.float32) * 2
    v = rng.standard_normal((1, n_kv, HEAD_DIM), dtype=np.float32)
    scale = 1 / np.sqrt(HEAD_DIM)
    q_bits = attention_reference.prepare_operand(q, n_q, HEAD_DIM, precision)[:, 0]
    k_bits = attention_reference.prepare_operand(k, n_kv_pad, HEAD_DIM, precision)[:, 0]
    v_bits = attention_reference.prepare_operand(v, n_kv_pad, HEAD_DIM, precision)[:, 0]
    params = np.zeros(16, dtype=np.float32)
    params[:4] = attention_reference.prepare_params(scale, n_q, n_kv, causal)[:4]
    expected = attention_reference.attention_reference(q, k, v, scale, causal, precision)[0]
    for q_row0 in range(0, n_q, Q_ROWS):
        got = run_attention_tile(attention_lib, q_bits, k_bits, v_bits, params, q_row0, precision)
        want = expected[q_row0 : q_row0 + Q_ROWS]
        assert np.isfinite(got).all()
        assert np.abs(got - want).max() <= tolerance * np.abs(want).max(), (q_row0, np.abs(got - want).max())


def test_softmax_kernel_matches_the_reference_and_masks_the_padding(softmax_lib):
    rng = np.random.default_rng(3)
    cols, cols_pad = 1500, 1504
    x = (rng.standard_normal(cols_pad, dtype=np.float32) * 30).astype(np.float32)
    x[5] = -np.inf  # a masked score
    y = np.zeros(cols_pad, dtype=np.float32)
    params = softmax_reference.prepare_params(cols)
    softmax_lib.xdna_softmax_row_f32(ptr(x), ptr(y), ptr(params), ctypes.c_int32(cols_pad))
    want = softmax_reference.softmax_rows(x[None, :cols])[0]
    # same operations per element; the sum's order differs (16 lanes + tree vs pairwise): measured 3.2e-7
    np.testing.assert_allclose(y[:cols], want, rtol=1e-6, atol=1e-30)
    assert (y[cols:] == 0).all() and y[5] == 0
    x[:] = -np.inf  # a fully masked row gives NaN, as ONNX Runtime does, and zeros in the padding
    softmax_lib.xdna_softmax_row_f32(ptr(x), ptr(y), ptr(params), ctypes.c_int32(cols_pad))
    assert np.isnan(y[:cols]).all() and (y[cols:] == 0).all()


def blocked(matrix: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Row-major matrix -> rows x cols blocks, each row-major, blocks row-major (the DMA's layout)."""
    m, n = matrix.shape
    return np.ascontiguousarray(matrix.reshape(m // rows, rows, n // cols, cols).transpose(0, 2, 1, 3)).reshape(-1)


def params_object(params: np.ndarray) -> np.ndarray:
    """One column block's params words as the core reads its params object from the B stream: a K_TILE x N_TILE
    bf16 object whose first f32 words are the params (kernels/matmul/design.py params_objects, re-blocked)."""
    words = np.zeros(K_TILE * N_TILE // 2, dtype=np.float32)
    words[: params.size] = params
    return words.view(np.uint16)


def test_matmul_kernel_with_bias_and_gelu_matches_the_reference(matmul_lib):
    rng = np.random.default_rng(5)
    a = rng.standard_normal((M_TILE, 2 * K_TILE), dtype=np.float32)
    b = rng.standard_normal((2 * K_TILE, N_TILE), dtype=np.float32)
    bias = rng.standard_normal(N_TILE, dtype=np.float32)
    a_bits, b_bits = to_bf16_bits(a), to_bf16_bits(b)
    c = np.zeros(M_TILE * N_TILE, dtype=np.float32)
    matmul_lib.xdna_zero_f32(ptr(c))
    for step in range(2):  # K = 2 tiles, accumulating in fp32
        a_tile = blocked(np.ascontiguousarray(a_bits[:, step * K_TILE : (step + 1) * K_TILE]), R, S)
        b_tile = blocked(np.ascontiguousarray(b_bits[step * K_TILE : (step + 1) * K_TILE]), S, T)
        matmul_lib.xdna_matmul_bf16_f32(ptr(a_tile), ptr(b_tile), ptr(c))
    params = matmul_reference.prepare_params(bias, "gelu", N_TILE, N_TILE)
    params_words = params_object(params)  # kept alive across the call
    matmul_lib.xdna_bias_gelu_f32(ptr(params_words), ptr(c))
    got = c.reshape(M_TILE // R, N_TILE // T, R, T).transpose(0, 2, 1, 3).reshape(M_TILE, N_TILE)
    want = matmul_reference.gelu(from_bf16_bits(a_bits) @ from_bf16_bits(b_bits) + bias)
    # fp32 sums in another order, and the vector exp against NumPy's: measured 9.7e-8 of the scale
    assert np.abs(got - want).max() <= 5e-7 * np.abs(want).max()


def test_matmul_kernel_at_the_npu2_intrinsic_shape(tmp_path_factory):
    r, s, t = NPU2_MMUL
    lib = build(tmp_path_factory, "matmul/matmul.cc",
                [f"-DDIM_M={M_TILE}", f"-DDIM_K={K_TILE}", f"-DDIM_N={N_TILE}", f"-DMMUL_R={r}", f"-DMMUL_S={s}", f"-DMMUL_T={t}"])  # fmt: skip
    rng = np.random.default_rng(6)
    a_bits = to_bf16_bits(rng.standard_normal((M_TILE, K_TILE), dtype=np.float32))
    b_bits = to_bf16_bits(rng.standard_normal((K_TILE, N_TILE), dtype=np.float32))
    bias = rng.standard_normal(N_TILE, dtype=np.float32)
    c = np.zeros(M_TILE * N_TILE, dtype=np.float32)
    a_tile, b_tile = blocked(a_bits, r, s), blocked(b_bits, s, t)  # kept alive across the calls
    params = matmul_reference.prepare_params(bias, "", N_TILE, N_TILE)
    lib.xdna_matmul_bf16_f32(ptr(a_tile), ptr(b_tile), ptr(c))
    params_words = params_object(params)  # kept alive across the call
    lib.xdna_bias_gelu_f32(ptr(params_words), ptr(c))
    got = c.reshape(M_TILE // r, N_TILE // t, r, t).transpose(0, 2, 1, 3).reshape(M_TILE, N_TILE)
    want = from_bf16_bits(a_bits) @ from_bf16_bits(b_bits) + bias
    assert np.abs(got - want).max() <= 5e-7 * np.abs(want).max()  # fp32 sums in another order


def test_gelu_epilogue_max_error_against_fp32_erf_gelu(matmul_lib):
    # the stated maximum error of the vector GELU (matmul.cc): over [-10, 10], against erf-GELU in float64
    x = np.linspace(-10, 10, M_TILE * N_TILE, dtype=np.float32)
    c = blocked(x.reshape(M_TILE, N_TILE), R, T).astype(np.float32)
    params = matmul_reference.prepare_params(np.zeros(N_TILE, np.float32), "gelu", N_TILE, N_TILE)
    params_words = params_object(params)  # kept alive across the call
    matmul_lib.xdna_bias_gelu_f32(ptr(params_words), ptr(c))
    got = c.reshape(M_TILE // R, N_TILE // T, R, T).transpose(0, 2, 1, 3).reshape(-1)
    from math import erf

    exact = np.array([0.5 * v * (1 + erf(v / np.sqrt(2))) for v in x.astype(np.float64)])
    assert np.abs(got - exact).max() <= 1e-6  # measured 4.5e-7 (at x = 4.6: 1e-7 of the value)


EXP_HARNESS = r"""
#include <cmath>
#include <cstdio>
#include "common/exp_v16.h"
int main() {
  double worst = 0.0;
  for (float x0 = -87.0f; x0 < 88.0f; x0 += 16 * 0.0007f) {
    aie::vector<float, 16> x;
    for (unsigned lane = 0; lane < 16; ++lane) x[lane] = x0 + lane * 0.0007f;
    const aie::vector<float, 16> e = xdna_exp_v16(x);
    for (unsigned lane = 0; lane < 16; ++lane) {
      if (x[lane] >= 88.0f) continue;
      const double exact = std::exp((double)x[lane]);
      const double error = std::fabs((double)e[lane] - exact) / exact;
      if (error > worst) worst = error;
    }
  }
  aie::vector<float, 16> edge = aie::broadcast<float, 16>(-INFINITY);
  edge[1] = -100.0f; edge[2] = 0.0f; edge[3] = 89.0f;
  const aie::vector<float, 16> e = xdna_exp_v16(edge);
  std::printf("%.3e %g %g %g %g\n", worst, (double)e[0], (double)e[1], (double)e[2], (double)e[3]);
}
"""


def test_vector_exp_is_accurate_to_fp32_and_clamps(tmp_path):
    source = tmp_path / "exp_v16_test.cc"
    source.write_text(EXP_HARNESS)
    binary = tmp_path / "exp_v16_test"
    subprocess.run(["g++", "-O1", "-std=c++20", "-I", str(STUB), "-I", str(KERNELS), str(source), "-o", str(binary)],
                   check=True, capture_output=True, text=True)  # fmt: skip
    worst, at_minus_inf, below_range, at_zero, above_range = (
        float(v) for v in subprocess.run([str(binary)], capture_output=True, text=True, check=True).stdout.split()
    )
    assert worst < 2e-7  # about one fp32 ulp, as the scalar form (tests/kernels/test_exp_f32.py)
    assert at_minus_inf == 0.0 and below_range == 0.0 and at_zero == 1.0 and above_range == float("inf")
