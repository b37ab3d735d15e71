//===- softmax.cc - xdna-ep row softmax core kernel (AIE2, fp32 throughout) -===//
//
// Compiled with Peano (llvm-aie): clang++ --target=aie2-none-unknown-elf -std=c++20 -O2
//   -I<mlir-aie>/include -c softmax.cc -o xdna_softmax.o   (CMakeLists.txt does this)
// The host-side names live in kernels/softmax/spec.py; the numerics contract is
// kernels/softmax/reference.py.
//
// Unlike mlir-aie's stock aie2/softmax.cc (npu.md: it does not subtract the row max, and its bf16 exp
// table returns garbage below about -142), this kernel subtracts the row max, computes exp in fp32 on
// 16-lane vectors (common/exp_v16.h: range reduction, degree-7 polynomial, error about 1e-7), sums in
// fp32 and scales by one reciprocal. A row of -inf only gives NaN, as ONNX Runtime does.
// Arithmetic order against reference.py: the same operations per element; the row sum is 16 lane
// partial sums reduced by a lane tree where NumPy sums pairwise (the last bits of the sum differ).
//
//===----------------------------------------------------------------------===//

#define NOCPP

#include <stdint.h>

#include <aie_api/aie.hpp>

#include "common/exp_v16.h"

// 0, 1, ..., 15: the lane index (a constant; one integer add gives the columns of any vector)
static inline aie::vector<int32_t, 16> lane_index() {
  aie::vector<int32_t, 16> index;
  for (unsigned lane = 0; lane < 16; ++lane)
    index[lane] = (int32_t)lane;
  return index;
}

// lanes of the vector starting at column c that lie past the true row length: one add, one compare
static inline aie::mask<16> padding_lanes(const aie::vector<int32_t, 16> &lanes, int32_t c, int32_t cols) {
  return aie::ge(aie::add(lanes, c), cols);
}

extern "C" {

// y[0:cols_pad] = softmax(x[0:cols]) with zeros in the padding; cols = params[0] (the launch's true
// row length), cols_pad (the design's row length) a multiple of 16. Every per-element step is a
// 16-lane vector operation: pass 1 the row max, pass 2 exp(x - max) and the running sum (16 lane
// partial sums, reduced by a lane tree at the end), pass 3 one multiply by the reciprocal.
void xdna_softmax_row_f32(const float *__restrict x, float *__restrict y, const float *__restrict params,
                          int32_t cols_pad) {
  aie::set_rounding(aie::rounding_mode::conv_even);
  const int32_t cols = (int32_t)params[0];
  const float neg_inf = -__builtin_inff();
  const aie::vector<int32_t, 16> lanes = lane_index();
  aie::vector<float, 16> running_max = aie::broadcast<float, 16>(neg_inf);
  for (int32_t c = 0; c < cols_pad; c += 16)
    chess_prepare_for_pipelining {
      const aie::vector<float, 16> v = aie::select(aie::load_v<16>(x + c), neg_inf, padding_lanes(lanes, c, cols));
      running_max = aie::max(running_max, v);
    }
  const float row_max = aie::reduce_max(running_max);
  if (row_max == neg_inf) { // every entry masked: NaN, like ONNX Runtime's CPU kernel
    for (int32_t c = 0; c < cols_pad; c += 16)
      aie::store_v(y + c, aie::select(aie::broadcast<float, 16>(__builtin_nanf("")), 0.0f, padding_lanes(lanes, c, cols)));
    return;
  }
  aie::vector<float, 16> sum = aie::zeros<float, 16>();
  for (int32_t c = 0; c < cols_pad; c += 16)
    chess_prepare_for_pipelining {
      const aie::vector<float, 16> shifted =
          aie::select(aie::sub(aie::load_v<16>(x + c), row_max), neg_inf, padding_lanes(lanes, c, cols));
      const aie::vector<float, 16> e = xdna_exp_v16(shifted); // padding: exp(-inf) = 0
      sum = aie::add(sum, e);
      aie::store_v(y + c, e);
    }
  const float inv = aie::inv(aie::reduce_add(sum)); // one reciprocal per row
  for (int32_t c = 0; c < cols_pad; c += 16)
    chess_prepare_for_pipelining aie::store_v(y + c, aie::mul(aie::load_v<16>(y + c), inv).to_vector<float>());
}

} // extern "C"
