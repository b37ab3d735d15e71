//===- exp_f32.h - fp32 exp for the xdna-ep AIE kernels ---------------------===//
//
// exp(x) = 2^n * exp(r), n = round(x / ln 2), r = x - n ln 2 with ln 2 split in two (Cody-Waite, so r
// is exact to fp32), exp(r) on |r| <= ln(2)/2 by its degree-7 Taylor polynomial (Horner). Relative
// error about 1e-7 (checked on the host: tests/kernels/test_exp_f32.py). Inputs below -87 give 0 (the
// result would be subnormal), above 88 +inf. The kernels keep softmax statistics in fp32 with it:
// mlir-aie's bf16 exp table returns garbage below about -142 (npu.md, Numerics).
//
//===----------------------------------------------------------------------===//

#pragma once

#include <stdint.h>

static inline float xdna_exp_f32(float x) {
  if (x < -87.0f)
    return 0.0f;
  if (x > 88.0f)
    return __builtin_inff();
  const float ln2_hi = 0.693145751953125f;    // ln 2 to 16 bits: n * ln2_hi is exact
  const float ln2_lo = 1.428606765330187e-6f; // the rest of ln 2
  const float t = x * 1.4426950408889634f;
  const int n = (int)(t + (t >= 0.0f ? 0.5f : -0.5f));
  const float r = (x - (float)n * ln2_hi) - (float)n * ln2_lo;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const uint32_t bits = (uint32_t)(n + 127) << 23;
  return p * *reinterpret_cast<const float *>(&bits);
}
