// libFuzzer target: loading a request trace (JSON) for a small data set.
#include "fuzz_common.h"
#include "loaders/trace.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const gati::Dataset d = [] {
    gati::Dataset s;
    s.name = "tiny";
    s.n = 50;
    s.c = 1;
    s.h = s.w = 4;
    s.classes = 5;
    s.images.assign(50 * 16, 0.5f);
    for (int i = 0; i < 50; ++i) s.labels.push_back(i % 5);
    return s;
  }();
  const std::string path = gati::fuzz::scratch_file("trace.json");
  gati::fuzz::write_bytes(path, data, size);
  return gati::fuzz::only_clear_errors([&] { gati::load_trace(path, d); });
}
