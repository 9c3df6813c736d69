// Weights as small integers times a power of two per row: how a large
// cache-model head is kept so that reading it costs a quarter of its floats'
// bytes.  At batch 1 a head's cost is the reading of its weights (ResNet-50's
// 17 heads of 1000 classes hold 30 MB as halves, 15 MB like this), and a
// power-of-two scale makes q * scale exact: a kernel that reads the integers
// computes, bit for bit, what it computes from the floats.
#pragma once

#include <cstdint>
#include <vector>

namespace gati {

constexpr int kInt8Max = 127;

struct Int8Rows {
  std::vector<int8_t> q;     // [rows, cols]
  std::vector<float> scale;  // [rows], each a power of two
};

// The smallest power of two s, and at least 2^-24, with max |row| <= 127 * s
// (1 for a row of zeros); 0 when the row holds a NaN or infinity or s would
// leave float's range.  Rows rounded with it are halves exactly as long as
// max |row| stays within 127 * 2^9 (65024).
float int8_row_scale(const float* row, int cols);

// Rounds each row of w [rows, cols] to the nearest multiples of its
// int8_row_scale: each weight moves by at most half a step, 1/254 of its row's
// largest |value|.  Rows without a scale (non-finite values) are left as they are.
void round_rows_to_int8(float* w, int rows, int cols);

// The rows as integers and scales when every value is q * scale exactly,
// |q| <= 127; empty otherwise (the floats are read).
Int8Rows int8_rows_if_exact(const std::vector<float>& w, int rows, int cols);

}  // namespace gati
