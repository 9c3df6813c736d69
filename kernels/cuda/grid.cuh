// Launch geometry shared by the elementwise kernels: enough blocks of
// `threads` to cover `total` items once, capped at 65536 (the kernels use
// grid-stride loops past that).
#pragma once

namespace gati::cuda {

inline unsigned grid_for(long total, int threads) {
  const long blocks = (total + threads - 1) / threads;
  return unsigned(blocks < 1 ? 1 : blocks < 65536 ? blocks : 65536);
}

}  // namespace gati::cuda
