// The one interface between the executor and a backend (CPU today, CUDA next).
//
// The executor owns the schedule (which op, which arena slot, where exits
// are); a backend owns the weights in its own layout and the memory the
// arena lives in.  All activations are NHWC.  Calls may be asynchronous
// (a CUDA backend enqueues on its stream); synchronize() is the only
// barrier, and to_host() is the only way data leaves backend memory.
#pragma once

#include <cstddef>
#include <memory>
#include <string>

namespace gati {

struct Model;

// An activation's shape, NHWC.
struct Act {
  int n = 0, h = 0, w = 0, c = 0;
  size_t per_sample() const { return size_t(h) * size_t(w) * size_t(c); }
  size_t elems() const { return size_t(n) * per_sample(); }
  Act with_batch(int batch) const { return {batch, h, w, c}; }
};

// Memory owned by a backend (host or device), released by its destructor.
class Buffer {
 public:
  virtual ~Buffer() = default;
  virtual float* data() = 0;
  virtual size_t floats() const = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;

  // Takes the model's folded weights into the backend's own layout, once.
  virtual void load_weights(const Model& model) = 0;
  virtual std::unique_ptr<Buffer> allocate(size_t floats) = 0;

  // Host NCHW (the PyTorch convention) into backend NHWC.
  virtual void input_from_host_nchw(const float* host, const Act& shape, float* dst) = 0;
  // Model convolution `conv` (index into Network::convs) with folded bias,
  // optional residual (same shape as the output) and ReLU.
  virtual void conv(int conv, const float* in, const Act& in_shape, float* out, const float* residual, bool relu) = 0;
  virtual void max_pool(const float* in, const Act& in_shape, int kernel, int stride, int pad, float* out) = 0;
  // [n, h, w, c] -> [n, c]
  virtual void global_avg_pool(const float* in, const Act& shape, float* out) = 0;
  // The model's fully connected layer: [n, features] -> [n, classes]
  virtual void classifier(const float* pooled, int n, float* logits) = 0;

  virtual void to_host(const float* src, size_t floats, float* host) = 0;
  virtual void synchronize() = 0;
};

// The CPU backend; `threads` <= 0 means all cores.
std::unique_ptr<Backend> make_cpu_backend(int threads = 0);

}  // namespace gati
