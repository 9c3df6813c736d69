// Loads a model through the installed headers and library and classifies
// one random image: proof that find_package(gati) gives a working target.
#include <cstdio>
#include <random>
#include <vector>

#include "engine/engine.h"

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: consumer MODEL\n");
    return 2;
  }
  try {
    gati::Engine engine(argv[1]);
    const gati::Arch& a = engine.arch();
    std::vector<float> x(size_t(a.in_channels) * size_t(a.input_h) * size_t(a.input_w));
    std::mt19937 rng(1);
    std::normal_distribution<float> d;
    for (float& v : x) v = d(rng);
    const std::vector<float> logits = engine.infer(x.data(), 1);
    std::printf("consumer: %s gave %zu logits\n", a.name.c_str(), logits.size());
    return logits.size() == size_t(a.num_classes) ? 0 : 1;
  } catch (const gati::Error& e) {
    std::fprintf(stderr, "consumer: %s\n", e.what());
    return 1;
  }
}
