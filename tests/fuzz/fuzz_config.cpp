// libFuzzer target: reading a cache build configuration (JSON).
#include "cache/config.h"
#include "fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = gati::fuzz::scratch_file("config.json");
  gati::fuzz::write_bytes(path, data, size);
  return gati::fuzz::only_clear_errors([&] {
    // What is read must write back and read again to the same settings.
    const gati::BuildOptions o = gati::load_build_config(path);
    const std::string again = gati::build_options_to_json(o).dump();
    const std::string twice =
        gati::build_options_to_json(gati::build_options_from_json(nlohmann::json::parse(again), "again")).dump();
    if (again != twice) {
      std::fprintf(stderr, "configuration does not round-trip:\n%s\n%s\n", again.c_str(), twice.c_str());
      std::abort();
    }
  });
}
