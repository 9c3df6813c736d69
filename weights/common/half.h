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
