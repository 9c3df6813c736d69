// libFuzzer target: the Fashion-MNIST IDX reader (gzip or plain) on an
// arbitrary images file beside a valid labels file.
#include <cstdint>
#include <filesystem>

#include "fuzz_common.h"
#include "loaders/fashion_mnist.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string dir = [] {
    const std::string d = std::filesystem::path(gati::fuzz::scratch_file("x")).parent_path().string() + "/idx";
    std::filesystem::create_directories(d);
    // Two labels, plain IDX1: magic 0x00000801, count 2.
    const uint8_t labels[] = {0, 0, 8, 1, 0, 0, 0, 2, 3, 7};
    gati::fuzz::write_bytes(d + "/t10k-labels-idx1-ubyte.gz", labels, sizeof labels);
    return d;
  }();
  gati::fuzz::write_bytes(dir + "/t10k-images-idx3-ubyte.gz", data, size);
  return gati::fuzz::only_clear_errors([&] { gati::load_fashion_mnist(dir, "test"); });
}
