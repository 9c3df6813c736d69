// libFuzzer target: the safetensors reader on arbitrary bytes, then every
// tensor read back as float.
#include "fuzz_common.h"
#include "weights/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return gati::fuzz::only_clear_errors([&] {
    const gati::SafeTensorsFile f = gati::SafeTensorsFile::from_bytes({data, data + size}, "fuzz.safetensors");
    for (const std::string& name : f.names()) {
      std::vector<int64_t> shape;
      f.read_float(name, &shape);
    }
  });
}
