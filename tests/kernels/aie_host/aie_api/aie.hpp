// Host-side stand-in for the subset of the AIE API (aie_api/aie.hpp) the xdna-ep kernels use, so that
// the kernels compile with g++ and run on the host against their NumPy references
// (tests/kernels/test_kernels_on_host.py). Semantics: fp32 lanes are exact IEEE fp32 (the device
// emulates fp32 multiplies with bf16 products: UG1603, "Floating-Point Operations"), bfloat16 rounds to
// nearest even (the kernels set aie::rounding_mode::conv_even), mmul accumulates bf16 products in fp32.
// Not a model of timing; only what the kernels call is here.
#pragma once

#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#define chess_prepare_for_pipelining
#define chess_loop_range(...)

struct bfloat16 {
  uint16_t bits = 0;
  bfloat16() = default;
  bfloat16(float f) { // round to nearest even (NaN kept quiet)
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) {
      bits = (uint16_t)((u >> 16) | 0x40);
      return;
    }
    u += 0x7fffu + ((u >> 16) & 1u);
    bits = (uint16_t)(u >> 16);
  }
  operator float() const {
    uint32_t u = (uint32_t)bits << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
};

struct accfloat {};

namespace aie {

enum class rounding_mode { floor, conv_even };
inline void set_rounding(rounding_mode) {}

template <typename T, unsigned N> struct vector {
  std::array<T, N> v{};
  static constexpr unsigned size() { return N; }
  T &operator[](unsigned i) { return v[i]; }
  T operator[](unsigned i) const { return v[i]; }
  T get(unsigned i) const { return v[i]; }
  template <unsigned M> vector<T, M> extract(unsigned index) const {
    vector<T, M> out;
    for (unsigned i = 0; i < M; ++i)
      out.v[i] = v[index * M + i];
    return out;
  }
  template <unsigned M> vector &insert(unsigned index, const vector<T, M> &part) {
    for (unsigned i = 0; i < M; ++i)
      v[index * M + i] = part.v[i];
    return *this;
  }
  template <typename U> vector<U, N * sizeof(T) / sizeof(U)> cast_to() const {
    vector<U, N * sizeof(T) / sizeof(U)> out;
    std::memcpy(out.v.data(), v.data(), sizeof(v));
    return out;
  }
};

template <unsigned N> struct mask {
  std::array<bool, N> m{};
};

template <typename Tag, unsigned N> struct accum {
  std::array<float, N> v{};
  accum() = default;
  template <typename T> explicit accum(const vector<T, N> &x) {
    for (unsigned i = 0; i < N; ++i)
      v[i] = (float)x.v[i];
  }
  template <typename T> void from_vector(const vector<T, N> &x, int = 0) {
    for (unsigned i = 0; i < N; ++i)
      v[i] = (float)x.v[i];
  }
  template <typename T> vector<T, N> to_vector(int = 0) const {
    vector<T, N> out;
    for (unsigned i = 0; i < N; ++i)
      out.v[i] = (T)v[i];
    return out;
  }
};

template <unsigned N, typename T> vector<T, N> load_v(const T *p) {
  vector<T, N> out;
  for (unsigned i = 0; i < N; ++i)
    out.v[i] = p[i];
  return out;
}
template <typename T, unsigned N> void store_v(T *p, const vector<T, N> &x) {
  for (unsigned i = 0; i < N; ++i)
    p[i] = x.v[i];
}
template <typename T, unsigned N> vector<T, N> broadcast(T value) {
  vector<T, N> out;
  out.v.fill(value);
  return out;
}
template <typename T, unsigned N> struct zeros_of {
  static vector<T, N> make() { return broadcast<T, N>(T(0)); }
};
template <unsigned N> struct zeros_of<accfloat, N> {
  static accum<accfloat, N> make() { return accum<accfloat, N>(); }
};
template <typename T, unsigned N> auto zeros() { return zeros_of<T, N>::make(); }

template <typename T, unsigned N, typename... Rest> auto concat(const vector<T, N> &a, const Rest &...rest) {
  constexpr unsigned M = N * (1 + sizeof...(Rest));
  vector<T, M> out;
  const vector<T, N> parts[] = {a, rest...};
  for (unsigned p = 0; p < 1 + sizeof...(Rest); ++p)
    for (unsigned i = 0; i < N; ++i)
      out.v[p * N + i] = parts[p].v[i];
  return out;
}

// rows x cols row-major -> cols x rows row-major
template <typename T, unsigned N> vector<T, N> transpose(const vector<T, N> &x, unsigned rows, unsigned cols) {
  vector<T, N> out;
  for (unsigned r = 0; r < rows; ++r)
    for (unsigned c = 0; c < cols; ++c)
      out.v[c * rows + r] = x.v[r * cols + c];
  return out;
}

#define XDNA_STUB_BINARY(name, expr)                                                                              \
  template <typename T, unsigned N> vector<T, N> name(const vector<T, N> &a, const vector<T, N> &b) {             \
    vector<T, N> out;                                                                                             \
    for (unsigned i = 0; i < N; ++i) {                                                                            \
      const T x = a.v[i], y = b.v[i];                                                                             \
      out.v[i] = (expr);                                                                                          \
    }                                                                                                             \
    return out;                                                                                                   \
  }                                                                                                               \
  template <typename T, unsigned N> vector<T, N> name(const vector<T, N> &a, T b) {                               \
    return name(a, broadcast<T, N>(b));                                                                           \
  }
XDNA_STUB_BINARY(add, x + y)
XDNA_STUB_BINARY(sub, x - y)
XDNA_STUB_BINARY(max, x > y ? x : y)
XDNA_STUB_BINARY(min, x < y ? x : y)
#undef XDNA_STUB_BINARY

// fp32 multiply: the device returns an accumulator (to_vector<float>() reads it)
template <unsigned N> accum<accfloat, N> mul(const vector<float, N> &a, const vector<float, N> &b) {
  accum<accfloat, N> out;
  for (unsigned i = 0; i < N; ++i)
    out.v[i] = a.v[i] * b.v[i];
  return out;
}
template <unsigned N> accum<accfloat, N> mul(const vector<float, N> &a, float b) { return mul(a, broadcast<float, N>(b)); }

template <unsigned N> accum<accfloat, N> add(const accum<accfloat, N> &a, const vector<float, N> &b) {
  accum<accfloat, N> out;
  for (unsigned i = 0; i < N; ++i)
    out.v[i] = a.v[i] + b.v[i];
  return out;
}

template <typename T, unsigned N> vector<T, N> neg(const vector<T, N> &a) {
  vector<T, N> out;
  for (unsigned i = 0; i < N; ++i)
    out.v[i] = -a.v[i];
  return out;
}
template <typename T, unsigned N> vector<T, N> abs(const vector<T, N> &a) {
  vector<T, N> out;
  for (unsigned i = 0; i < N; ++i)
    out.v[i] = a.v[i] < 0 ? -a.v[i] : a.v[i];
  return out;
}
template <unsigned N> vector<float, N> inv(const vector<float, N> &a) {
  vector<float, N> out;
  for (unsigned i = 0; i < N; ++i)
    out.v[i] = 1.0f / a.v[i];
  return out;
}
inline float inv(float a) { return 1.0f / a; }

template <typename T, unsigned N> T reduce_add(const vector<T, N> &a) { // lane tree, as the device's shuffles
  vector<T, N> x = a;
  for (unsigned width = N / 2; width > 0; width /= 2)
    for (unsigned i = 0; i < width; ++i)
      x.v[i] = x.v[i] + x.v[i + width];
  return x.v[0];
}
template <typename T, unsigned N> T reduce_max(const vector<T, N> &a) {
  T best = a.v[0];
  for (unsigned i = 1; i < N; ++i)
    best = a.v[i] > best ? a.v[i] : best;
  return best;
}

#define XDNA_STUB_COMPARE(name, op)                                                                               \
  template <typename T, unsigned N> mask<N> name(const vector<T, N> &a, const vector<T, N> &b) {                  \
    mask<N> out;                                                                                                  \
    for (unsigned i = 0; i < N; ++i)                                                                              \
      out.m[i] = a.v[i] op b.v[i];                                                                                \
    return out;                                                                                                   \
  }                                                                                                               \
  template <typename T, unsigned N> mask<N> name(const vector<T, N> &a, T b) { return name(a, broadcast<T, N>(b)); }
XDNA_STUB_COMPARE(lt, <)
XDNA_STUB_COMPARE(ge, >=)
#undef XDNA_STUB_COMPARE

template <unsigned N> mask<N> operator|(const mask<N> &a, const mask<N> &b) {
  mask<N> out;
  for (unsigned i = 0; i < N; ++i)
    out.m[i] = a.m[i] || b.m[i];
  return out;
}

// select(a, b, m): lane i is b where m is set, else a
template <typename T, unsigned N> vector<T, N> select(const vector<T, N> &a, const vector<T, N> &b, const mask<N> &m) {
  vector<T, N> out;
  for (unsigned i = 0; i < N; ++i)
    out.v[i] = m.m[i] ? b.v[i] : a.v[i];
  return out;
}
template <typename T, unsigned N> vector<T, N> select(const vector<T, N> &a, T b, const mask<N> &m) {
  return select(a, broadcast<T, N>(b), m);
}

// float -> int32 with the rounding mode the kernels set (conv_even), int32 -> float
template <typename I = int32_t, unsigned N> vector<int32_t, N> to_fixed(const vector<float, N> &a, int shift = 0) {
  vector<int32_t, N> out;
  for (unsigned i = 0; i < N; ++i)
    out.v[i] = (int32_t)std::nearbyint(std::ldexp(a.v[i], shift));
  return out;
}
template <typename F = float, unsigned N> vector<float, N> to_float(const vector<int32_t, N> &a, int shift = 0) {
  vector<float, N> out;
  for (unsigned i = 0; i < N; ++i)
    out.v[i] = std::ldexp((float)a.v[i], -shift);
  return out;
}
template <unsigned N> vector<int32_t, N> upshift(const vector<int32_t, N> &a, unsigned shift) {
  vector<int32_t, N> out;
  for (unsigned i = 0; i < N; ++i)
    out.v[i] = (int32_t)((uint32_t)a.v[i] << shift);
  return out;
}

template <unsigned R, unsigned S, unsigned T, typename A, typename B, typename Acc> struct mmul {
  static constexpr unsigned size_A = R * S, size_B = S * T, size_C = R * T;
  std::array<float, R * T> c{};
  mmul() = default;
  explicit mmul(const vector<float, R * T> &x) {
    for (unsigned i = 0; i < R * T; ++i)
      c[i] = x.v[i];
  }
  void mac(const vector<A, R * S> &a, const vector<B, S * T> &b) { // a r x s, b s x t, c r x t (row-major blocks)
    for (unsigned i = 0; i < R; ++i)
      for (unsigned j = 0; j < T; ++j) {
        float sum = c[i * T + j];
        for (unsigned k = 0; k < S; ++k)
          sum += (float)a.v[i * S + k] * (float)b.v[k * T + j];
        c[i * T + j] = sum;
      }
  }
  template <typename U> vector<U, R * T> to_vector(int = 0) const {
    vector<U, R * T> out;
    for (unsigned i = 0; i < R * T; ++i)
      out.v[i] = (U)c[i];
    return out;
  }
};

} // namespace aie
