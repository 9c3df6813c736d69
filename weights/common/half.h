// IEEE half precision on the host: conversions, and the test a backend uses
// to keep cache-model weights as halves (half the bytes a lookup reads)
// without changing a single result.
#pragma once

#include <cstdint>
#include <cstring>
#include <vector>

namespace gati {

// The largest finite half.
constexpr float kHalfMax = 65504.0f;

float half_to_float(uint16_t h);
// Nearest half (ties away from zero); out of range: infinity; NaN stays NaN.
uint16_t float_to_half(float f);

#if defined(__CUDACC__)
#define GATI_HALF_HOST_DEVICE __host__ __device__
#else
#define GATI_HALF_HOST_DEVICE
#endif

// float_to_half on a float's bits: the one rounding, for the host and for
// CUDA kernels that must round exactly as the host does (__float2half_rn
// rounds ties to even).
GATI_HALF_HOST_DEVICE inline uint16_t half_bits_of(uint32_t x) {
  const uint16_t sign = uint16_t((x >> 16) & 0x8000);
  const int exp = int((x >> 23) & 0xff) - 127 + 15;
  uint32_t mant = x & 0x7fffff;
  if (((x >> 23) & 0xff) == 0xff) return uint16_t(sign | 0x7c00 | (mant ? 0x200 : 0));
  if (exp >= 0x1f) return uint16_t(sign | 0x7c00);
  if (exp <= 0) {
    if (exp < -10) return sign;
    mant |= 0x800000;
    const int shift = 14 - exp;
    uint32_t h = mant >> shift;
    if ((mant >> (shift - 1)) & 1) ++h;  // round half up
    return uint16_t(sign | h);
  }
  uint16_t h = uint16_t(sign | uint16_t(exp << 10) | uint16_t(mant >> 13));
  if (mant & 0x1000) ++h;  // round to nearest (carry may bump the exponent, as it should)
  return h;
}

// The nearest half's value as a float.
inline float round_to_half(float f) { return half_to_float(float_to_half(f)); }

// Whether f is a half exactly (its sign included): stored as a half and
// read back, it is the same float, bit for bit.
inline bool is_half_exact(float f) {
  const float back = round_to_half(f);
  return std::memcmp(&back, &f, sizeof f) == 0;
}

// The values as halves when every one is a half exactly (is_half_exact),
// else empty: how a backend decides to keep cache-model weights as halves.
std::vector<uint16_t> halves_if_exact(const std::vector<float>& values);

}  // namespace gati
