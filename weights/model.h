// A loaded model: the network description plus its weights, batch norm folded.
//
// Folding happens once at load (scale = gamma / sqrt(var + eps), computed in
// double): every convolution becomes weight*scale with bias
// beta - mean*scale, so backends only ever see conv + bias (+ residual) + ReLU.
// Weights stay in PyTorch's OIHW order here; each backend repacks them.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "weights/resnet.h"

namespace gati {

struct ConvWeights {
  std::vector<float> weight;  // [cout, cin/groups, k, k], folded
  std::vector<float> bias;    // [cout]
};

struct Model {
  Network net;
  std::vector<ConvWeights> convs;  // parallel to net.convs
  std::vector<float> fc_weight;    // [num_classes, features]
  std::vector<float> fc_bias;      // [num_classes]
  std::string path;
  int64_t parameters = 0;  // values in the file's tensors that the model uses

  const Arch& arch() const { return net.arch; }
};

// A 64-bit fingerprint (16 hex digits) of the architecture and every folded
// weight: caches record the one of the model they were built for, so caches
// are never applied to other weights of the same architecture.  Not a
// cryptographic hash; it tells models apart, it does not authenticate them.
std::string fingerprint(const Model& model);

// Loads and validates a gati .safetensors model; every error names the file
// and the tensor.
Model load_model(const std::string& path);

// The folding step on its own (exposed for tests).
ConvWeights fold_batch_norm(const std::vector<float>& weight, int cout, const std::vector<float>& gamma,
                            const std::vector<float>& beta, const std::vector<float>& mean,
                            const std::vector<float>& var, double eps);

}  // namespace gati
