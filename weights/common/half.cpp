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
  return half_bits_of(x);
}

std::vector<uint16_t> halves_if_exact(const std::vector<float>& values) {
  if (!std::all_of(values.begin(), values.end(), is_half_exact)) return {};
  std::vector<uint16_t> h(values.size());
  std::transform(values.begin(), values.end(), h.begin(), float_to_half);
  return h;
}

}  // namespace gati
