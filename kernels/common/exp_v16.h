//===- exp_v16.h - fp32 exp on 16-lane vectors for the xdna-ep AIE kernels --===//
//
// The arithmetic of common/exp_f32.h (the scalar form, checked on the host against libm) on
// aie::vector<float, 16>, so that no kernel runs a scalar float loop per element (AIE-ML has no scalar
// FPU: UG1603):
//   n = round(x * log2(e))                      to_fixed with the kernels' conv_even rounding
//   r = (x - n * ln2_hi) - n * ln2_lo           Cody-Waite: r exact to fp32, |r| <= ln(2)/2
//   p = 1 + r + r^2/2 + ... + r^7/5040          degree-7 Taylor polynomial, Horner (7 mul + 7 add)
//   exp(x) = p * 2^n                            n added to p's exponent bits (p's bits + (n << 23))
// Inputs below -87 give 0 (and -inf gives 0, never NaN), above 88 +inf, as the scalar form.
// Differs from the scalar form only in the rounding of n at exact .5 ties (to even, not away from
// zero), which changes which r the polynomial sees, not the accuracy. Per 16 lanes: 10 fp32
// multiplies, 19 ALU operations (kernels/timing.py EXP_MULS, EXP_ALU).
//
//===----------------------------------------------------------------------===//

#pragma once

#include <stdint.h>

#include <aie_api/aie.hpp>

static inline aie::vector<float, 16> xdna_exp_v16(aie::vector<float, 16> x) {
  const aie::mask<16> underflow = aie::lt(x, -87.0f);
  const aie::mask<16> overflow = aie::ge(x, 88.0f);
  const aie::vector<float, 16> xc = aie::min(aie::max(x, -87.0f), 88.0f);
  const aie::vector<int32_t, 16> n = aie::to_fixed<int32_t>(aie::mul(xc, 1.4426950408889634f).to_vector<float>(), 0);
  const aie::vector<float, 16> nf = aie::to_float<float>(n, 0);
  aie::vector<float, 16> r = aie::sub(xc, aie::mul(nf, 0.693145751953125f).to_vector<float>());
  r = aie::sub(r, aie::mul(nf, 1.428606765330187e-6f).to_vector<float>());
  aie::vector<float, 16> p = aie::broadcast<float, 16>(1.0f / 5040.0f);
  p = aie::add(aie::mul(p, r).to_vector<float>(), 1.0f / 720.0f);
  p = aie::add(aie::mul(p, r).to_vector<float>(), 1.0f / 120.0f);
  p = aie::add(aie::mul(p, r).to_vector<float>(), 1.0f / 24.0f);
  p = aie::add(aie::mul(p, r).to_vector<float>(), 1.0f / 6.0f);
  p = aie::add(aie::mul(p, r).to_vector<float>(), 0.5f);
  p = aie::add(aie::mul(p, r).to_vector<float>(), 1.0f);
  p = aie::add(aie::mul(p, r).to_vector<float>(), 1.0f);
  // p * 2^n by adding n to p's exponent field: exact, as the multiply would be, because p lies in
  // [0.7, 1.5) and the clamped result stays a normal float
  const aie::vector<int32_t, 16> bits = aie::add(p.cast_to<int32_t>(), aie::upshift(n, 23));
  aie::vector<float, 16> e = bits.cast_to<float>();
  e = aie::select(e, 0.0f, underflow);
  return aie::select(e, __builtin_inff(), overflow);
}
