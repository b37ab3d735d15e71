//===- mmul_shape.h - the bf16 aie::mmul shape the kernels are built for -----===//
//
// MMUL_R x MMUL_S x MMUL_T is the profile's bf16 matrix-multiply intrinsic (DeviceProfile.intrinsic_bf16:
// 4 x 8 x 4 on AIE2 / npu1, 8 x 8 x 8 on AIE2P / npu2), passed by kernels/designs.py compile_defines;
// npu1's by default.
//
//===----------------------------------------------------------------------===//

#pragma once

#include <aie_api/aie.hpp>

#ifndef MMUL_R
#define MMUL_R 4
#endif
#ifndef MMUL_S
#define MMUL_S 8
#endif
#ifndef MMUL_T
#define MMUL_T 4
#endif

constexpr unsigned R = MMUL_R, S = MMUL_S, T = MMUL_T;
using MMUL = aie::mmul<R, S, T, bfloat16, bfloat16, accfloat>;
