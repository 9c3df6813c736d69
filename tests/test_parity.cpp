// Whole-model parity with PyTorch: every supported architecture, random
// weights, batch 1 and 4, logits within 1e-4 of the largest reference value.
// The references are made by tests/make_references.py during the same ctest
// run (fixture "parity_refs"); GATI_REFS names their folder.
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>

#include "engine/engine.h"
#include "test_util.h"
#include "weights/safetensors.h"

namespace gati {
namespace {

TEST(Parity, EveryArchitectureMatchesPyTorch) {
  const char* dir = std::getenv("GATI_REFS");
  ASSERT_TRUE(dir && *dir) << "GATI_REFS is not set; run through ctest, which makes the references first";
  std::ifstream f(std::string(dir) + "/manifest.json");
  ASSERT_TRUE(f) << dir << "/manifest.json is missing: did make_references fail?";
  const nlohmann::json manifest = nlohmann::json::parse(f);
  ASSERT_GE(manifest.size(), 13u) << "expected every architecture in the manifest";
  for (const auto& entry : manifest) {
    const std::string arch = entry["arch"];
    Engine engine(entry["model"].get<std::string>());
    for (const auto& b : entry["batches"]) {
      const SafeTensorsFile in = SafeTensorsFile::open(b["input"]);
      const SafeTensorsFile ref = SafeTensorsFile::open(b["logits"]);
      const TensorInfo& xi = in.info("input");
      const std::vector<float> x = in.read_float("input", xi.shape);
      const std::vector<float> want = ref.read_float("logits", ref.info("logits").shape);
      const std::vector<float> got =
          engine.infer(x.data(), int(xi.shape[0]), int(xi.shape[1]), int(xi.shape[2]), int(xi.shape[3]));
      ASSERT_EQ(got.size(), want.size()) << arch;
      double max_ref = 0, max_err = 0;
      for (size_t i = 0; i < want.size(); ++i) {
        max_ref = std::max(max_ref, std::abs(double(want[i])));
        max_err = std::max(max_err, std::abs(double(got[i]) - double(want[i])));
      }
      ASSERT_GT(max_ref, 0) << arch << ": reference logits are all zero";
      EXPECT_LE(max_err / max_ref, 1e-4) << arch << " batch " << b["n"] << ": max error " << max_err
                                         << " against max |ref| " << max_ref;
      std::printf("[parity] %-16s batch %d: max error / max |ref| = %.2e\n", arch.c_str(), b["n"].get<int>(),
                  max_err / max_ref);
    }
  }
}

}  // namespace
}  // namespace gati
