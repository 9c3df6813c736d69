// libFuzzer target: loading a model file (safetensors + architecture JSON +
// every tensor's shape + batch-norm folding) from arbitrary bytes.
#include "fuzz_common.h"
#include "weights/model.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = gati::fuzz::scratch_file("model.safetensors");
  gati::fuzz::write_bytes(path, data, size);
  return gati::fuzz::only_clear_errors([&] { gati::load_model(path); });
}
