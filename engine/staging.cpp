#include "engine/staging.h"

#include <algorithm>
#include <thread>
#include <vector>

#include "weights/common/checked.h"
#include "weights/common/error.h"

namespace gati {

size_t copy_in_chunks(float* dst, const float* src, size_t n, const StagingChunks& how,
                      const std::function<bool(size_t, size_t)>& copied, const std::function<bool()>& start) {
  if (how.chunk == 0 || how.parts == 0) fail("copy_in_chunks: chunk and parts must be positive");
  const size_t chunks = (n + how.chunk - 1) / how.chunk;
  const size_t parts = std::max<size_t>(1, std::min(how.parts, chunks));
  std::vector<size_t> bad(parts, n);
  auto copy_part = [&](size_t t) {
    for (size_t k = t * chunks / parts; k < (t + 1) * chunks / parts; ++k) {
      const size_t at = k * how.chunk, count = std::min(how.chunk, n - at);
      const size_t i = copy_checking_finite(dst + at, src + at, count);
      if (i < count) {
        bad[t] = at + i;
        return;
      }
      if (!copied(at, count)) return;
    }
  };
  {
    std::vector<std::thread> helpers;
    struct Join {  // at the end of this scope, also when starting a thread throws
      std::vector<std::thread>& threads;
      ~Join() {
        for (std::thread& h : threads) h.join();
      }
    } join{helpers};
    for (size_t t = 1; t < parts; ++t)
      helpers.emplace_back([&, t] {
        if (!start || start()) copy_part(t);
      });
    copy_part(0);
  }
  return *std::min_element(bad.begin(), bad.end());
}

size_t staging_parts(size_t bytes, size_t chunk_bytes, size_t threaded_from, size_t max_parts) {
  if (bytes < threaded_from || chunk_bytes == 0) return 1;
  const size_t cores = std::max(1u, std::thread::hardware_concurrency() / 2);
  const size_t chunks = (bytes + chunk_bytes - 1) / chunk_bytes;
  return std::max<size_t>(1, std::min({max_parts, cores, chunks}));
}

}  // namespace gati
