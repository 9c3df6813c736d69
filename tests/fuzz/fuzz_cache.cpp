// libFuzzer target: loading a cache file for a fixed small model from
// arbitrary bytes (metadata JSON, exits checked against the model, tensors).
#include "cache/learned_cache.h"
#include "fuzz_common.h"
#include "random_model.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const gati::Model model = gati::test::random_model(gati::test::kTinyArch, 1);
  const std::string path = gati::fuzz::scratch_file("caches.safetensors");
  gati::fuzz::write_bytes(path, data, size);
  return gati::fuzz::only_clear_errors([&] { gati::CacheSet::load(path, model); });
}
