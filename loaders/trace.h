// Request traces over a labelled data set, seeded and reproducible.
//
//   uniform   every request an independent uniform draw (Freeze's setting)
//   zipf      classes drawn Zipf(s) over a seeded class ranking
//   locality  video-like: the class persists with probability p, and with
//             probability p a request repeats the previous item, shifted by up
//             to one pixel with a little noise (a near-duplicate)
//   drift     the class mix changes every `period` requests (80% of the mass
//             on three classes chosen per phase)
// A trace is a list of (item, shift, noise seed); render() turns a request
// into pixels.  Traces save as JSON and load with validation.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "loaders/fashion_mnist.h"

namespace gati {

// The most requests one trace file may hold (about 40 bytes each in memory).
constexpr size_t kMaxTraceRequests = 1'000'000;
// A saved trace's largest file: 64 bytes a request is more than the longest
// request gati writes ([index, dx, dy, noise, noise_seed] at full width).
constexpr size_t kMaxTraceBytes = kMaxTraceRequests * 64 + (size_t(1) << 16);

struct Request {
  int index = 0;       // item in the data set
  int dx = 0, dy = 0;  // shift in pixels
  float noise = 0;     // std of added Gaussian noise
  uint32_t noise_seed = 0;
};

struct TraceParams {
  double zipf_s = 1.2;
  double locality_p = 0.9;
  int drift_period = 1000;
};

struct Trace {
  std::string kind;
  uint64_t seed = 0;
  TraceParams params;
  std::string source;  // data set name the indices refer to
  int source_size = 0;
  std::vector<Request> requests;
};

const std::vector<std::string>& trace_kinds();

Trace make_trace(const std::string& kind, const Dataset& data, int n_requests, uint64_t seed,
                 const TraceParams& params = {});
void save_trace(const std::string& path, const Trace& t);
// Validates against the data set it will be replayed on.
Trace load_trace(const std::string& path, const Dataset& data);

// Writes the request's image (raw [0, 1], NCHW for one sample) to out.
void render(const Dataset& data, const Request& r, float* out);

}  // namespace gati
