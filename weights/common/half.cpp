// IEEE half conversions; see half.h.
#include "weights/common/half.h"

#include <algorithm>
#include <cstring>

namespace gati {

float half_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000) << 16;
  const uint32_t exp = (h >> 10) & 0x1f;
  uint32_t mant = h & 0x3ff;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: normalise
      int e = -1;
      do {
        ++e;
        mant <<= 1;
      } while ((mant & 0x400) == 0);
      bits = sign | uint32_t(127 - 15 - e) << 23 | (mant & 0x3ff) << 13;
    }
  } else if (exp == 0x1f) {
    bits = sign | 0x7f800000u | mant << 13;
  } else {
    bits = sign | (exp + 127 - 15) << 23 | mant << 13;
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

uint16_t float_to_half(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint16_t sign = (x >> 16) & 0x8000;
  const int exp = int((x >> 23) & 0xff) - 127 + 15;
  uint32_t mant = x & 0x7fffff;
  if (((x >> 23) & 0xff) == 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  if (exp >= 0x1f) return sign | 0x7c00;
  if (exp <= 0) {
    if (exp < -10) return sign;
    mant |= 0x800000;
    const int shift = 14 - exp;
    uint32_t h = mant >> shift;
    if ((mant >> (shift - 1)) & 1) ++h;  // round half up
    return sign | uint16_t(h);
  }
  uint16_t h = sign | uint16_t(exp << 10) | uint16_t(mant >> 13);
  if (mant & 0x1000) ++h;  // round to nearest (carry may bump the exponent, as it should)
  return h;
}

std::vector<uint16_t> halves_if_exact(const std::vector<float>& values) {
  if (!std::all_of(values.begin(), values.end(), is_half_exact)) return {};
  std::vector<uint16_t> h(values.size());
  std::transform(values.begin(), values.end(), h.begin(), float_to_half);
  return h;
}

}  // namespace gati
