//===- softmax.cc - xdna-ep row softmax core kernel (AIE2, fp32 throughout) -===//
//
// Compiled with Peano (llvm-aie): clang++ --target=aie2-none-unknown-elf -std=c++20 -O2
//   -I<mlir-aie>/include -c softmax.cc -o xdna_softmax.o   (CMakeLists.txt does this)
// The host-side names live in kernels/softmax/spec.py; the numerics contract is
// kernels/softmax/reference.py.
//
// Unlike mlir-aie's stock aie2/softmax.cc (npu.md: it does not subtract the row max, and its bf16 exp
// table returns garbage below about -142), this kernel subtracts the row max, computes exp in fp32
// (common/exp_f32.h: range reduction, degree-6 polynomial, error < 2e-7), sums in fp32 and scales
// by one reciprocal. A row of -inf only gives NaN, as ONNX Runtime does.
//
//===----------------------------------------------------------------------===//

#define NOCPP

#include <stdint.h>

#include <aie_api/aie.hpp>

#include "common/exp_f32.h"

static inline aie::vector<float, 16> exp_f32(aie::vector<float, 16> x) {
  aie::vector<float, 16> result;
  for (unsigned lane = 0; lane < 16; ++lane)
    result[lane] = xdna_exp_f32(x[lane]);
  return result;
}

extern "C" {

// y[0:cols_pad] = softmax(x[0:cols]) with zeros in the padding; cols = params[0] (the launch's true
// row length), cols_pad (the design's row length) a multiple of 16.
void xdna_softmax_row_f32(const float *__restrict x, float *__restrict y, const float *__restrict params,
                          int32_t cols_pad) {
  aie::set_rounding(aie::rounding_mode::conv_even);
  const int32_t cols = (int32_t)params[0];
  const float neg_inf = -__builtin_inff();
  float row_max = neg_inf;
  for (int32_t c = 0; c < cols; ++c)
    row_max = x[c] > row_max ? x[c] : row_max;
  if (row_max == neg_inf) { // every entry masked: NaN, like ONNX Runtime's CPU kernel
    for (int32_t c = 0; c < cols_pad; ++c)
      y[c] = c < cols ? __builtin_nanf("") : 0.0f;
    return;
  }
  aie::accum<accfloat, 16> sum = aie::zeros<accfloat, 16>();
  for (int32_t c = 0; c < cols_pad; c += 16) {
    aie::vector<float, 16> v = aie::load_v<16>(x + c);
    for (unsigned lane = 0; lane < 16; ++lane)
      v[lane] = (c + (int32_t)lane) < cols ? v[lane] - row_max : neg_inf; // padding contributes exp(-inf) = 0
    aie::vector<float, 16> e = exp_f32(v);
    sum = aie::add(sum, e);
    aie::store_v(y + c, e);
  }
  const float inv = 1.0f / aie::reduce_add(sum.to_vector<float>());
  for (int32_t c = 0; c < cols_pad; c += 16)
    aie::store_v(y + c, aie::mul(aie::load_v<16>(y + c), inv).to_vector<float>());
}

} // extern "C"
