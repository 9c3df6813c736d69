// Writes the fuzzers' seed corpus with gati's own writers, so no opaque
// blob is committed:  fuzz_seeds OUT  ->  OUT/{safetensors,cache,trace,idx,config}/.
// (The model seed comes from tools/convert.py; see tools/test.sh.)
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "cache/config.h"
#include "cache/learned_cache.h"
#include "loaders/trace.h"
#include "random_model.h"
#include "weights/common/error.h"
#include "weights/safetensors.h"

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: fuzz_seeds OUT\n");
    return 2;
  }
  namespace fs = std::filesystem;
  const fs::path out = argv[1];
  for (const char* d : {"safetensors", "cache", "trace", "idx", "config"}) fs::create_directories(out / d);
  try {
    gati::SafeTensorsWriter w;
    w.add_float("a", {2, 3}, gati::test::random_floats(6, 1));
    w.set_metadata("k", "v");
    w.write((out / "safetensors" / "two.safetensors").string());

    const gati::Model m = gati::test::random_model(gati::test::kTinyArch, 1);
    gati::CacheSet set;
    set.model_arch = m.arch().name;
    set.model_fingerprint = gati::fingerprint(m);
    for (const gati::ExitHeadSpec& h : gati::test::random_heads(m, 2, 0.9f))
      set.exits.push_back(gati::ExitCache::from_head_spec(h));
    set.save((out / "cache" / "tiny.safetensors").string());

    const gati::Dataset d = gati::test::tiny_dataset();
    gati::save_trace((out / "trace" / "locality.json").string(), gati::make_trace("locality", d, 20, 1));

    // Two 28x28 images, plain IDX3: magic 0x00000803, dims 2, 28, 28.
    std::ofstream idx((out / "idx" / "two.idx3").string(), std::ios::binary);
    const unsigned char header[] = {0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 28, 0, 0, 0, 28};
    idx.write(reinterpret_cast<const char*>(header), sizeof header);
    for (int i = 0; i < 2 * 28 * 28; ++i) idx.put(char(i % 251));

    gati::BuildOptions o;  // every key, per-exit settings included
    o.exits["stem"].enabled = false;
    o.exits["layer1.0"].kind = gati::HeadKind::kKnn;
    o.exits["layer1.0"].pool = "avg2x2";
    std::ofstream((out / "config" / "full.json").string()) << gati::build_options_to_json(o).dump(2);
    std::ofstream((out / "config" / "small.json").string()) << R"({"kind": "kmeans", "train": 500})";
  } catch (const gati::Error& e) {
    std::fprintf(stderr, "fuzz_seeds: %s\n", e.what());
    return 1;
  }
  return 0;
}
