// The host's part of staging an input for a device: a copy into pinned
// memory that checks every value in the same pass, split into chunks so
// that each chunk's transfer can start while the next is copied, and shared
// by a few threads when the input is large (one core copies at about
// 10 GB/s; a PCIe 5 DMA engine moves 25 GB/s or more).
#pragma once

#include <cstddef>
#include <functional>

namespace gati {

struct StagingChunks {
  size_t chunk = 0;  // floats per chunk (> 0)
  size_t parts = 1;  // threads; part t copies chunks [t * chunks / parts, (t + 1) * chunks / parts)
};

// Copies src[0, n) into dst chunk by chunk with copy_checking_finite; after
// a chunk is copied and found finite, `copied(at, count)` runs on the thread
// that copied it (on CUDA: the chunk's asynchronous transfer) and returns
// false to stop that thread's part.  `start` runs first on each extra thread
// (on CUDA: selecting the device) and returns false to skip its part.  A part
// stops at its first bad value; the parts are in order, so the input's first
// bad value is the smallest one found, returned; n when every value is
// finite.  Callbacks must not throw: they record their error and return false.
size_t copy_in_chunks(float* dst, const float* src, size_t n, const StagingChunks& how,
                      const std::function<bool(size_t at, size_t count)>& copied,
                      const std::function<bool()>& start = nullptr);

// How many threads should copy `bytes`: one below `threaded_from` bytes,
// otherwise up to `max_parts`, half the cores, and never more than chunks.
size_t staging_parts(size_t bytes, size_t chunk_bytes, size_t threaded_from, size_t max_parts);

}  // namespace gati
