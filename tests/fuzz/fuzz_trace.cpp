// libFuzzer target: loading a request trace (JSON) for a small data set.
#include "fuzz_common.h"
#include "loaders/trace.h"
#include "random_model.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const gati::Dataset d = gati::test::tiny_dataset();
  const std::string path = gati::fuzz::scratch_file("trace.json");
  gati::fuzz::write_bytes(path, data, size);
  return gati::fuzz::only_clear_errors([&] { gati::load_trace(path, d); });
}
