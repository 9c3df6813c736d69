// Per-layer timing reports: a table for people, JSON for scripts, and a
// Chrome/Perfetto trace (chrome://tracing, ui.perfetto.dev) for timelines.
//
// Runs are aggregated by layer with the median over repetitions, so a
// report is stable against the odd slow run.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine/executor.h"

namespace gati {

struct LayerProfile {
  std::string name;
  std::string kind;
  int block = -1;
  double median_ms = 0;
  int64_t macs = 0;
  std::string method;  // the backend's way of running it (cuDNN engine), or empty
  double gflops() const { return median_ms > 0 ? 2.0 * double(macs) / (median_ms * 1e6) : 0.0; }
};

struct ProfileReport {
  std::string model, device;
  int batch = 0, repeats = 0, input_h = 0, input_w = 0;
  double total_ms = 0;     // median of whole-run times
  double peak_gflops = 0;  // the device's measured GEMM peak (0: not measured)
  // Median wall-clock time of the same call without per-layer events, as a
  // caller sees it (input check, copies, launches or recorded graphs,
  // results back); 0: not measured.  call_ms - total_ms is what the layers
  // do not account for.
  double call_ms = 0;
  std::vector<LayerProfile> layers;
};

// runs[r] is one run's timings; every run must have the same layers.
ProfileReport summarize(const std::vector<std::vector<LayerTiming>>& runs, const std::string& model,
                        const std::string& device, int batch, int h, int w);

std::string format_table(const ProfileReport& r);
std::string to_json(const ProfileReport& r);
// One run's timeline as Chrome trace events (complete events, microseconds).
std::string to_chrome_trace(const std::vector<LayerTiming>& run, const std::string& model);

double median(std::vector<double> v);
// p in [0, 100], nearest rank.
double percentile(std::vector<double> v, double p);

}  // namespace gati
