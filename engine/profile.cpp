// Profile reports; see profile.h.
#include "engine/profile.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "weights/common/error.h"

namespace gati {

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const double rank = std::ceil(p / 100.0 * double(v.size()));
  const size_t idx = size_t(std::clamp(rank, 1.0, double(v.size()))) - 1;
  return v[idx];
}

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t m = v.size() / 2;
  return v.size() % 2 ? v[m] : 0.5 * (v[m - 1] + v[m]);
}

ProfileReport summarize(const std::vector<std::vector<LayerTiming>>& runs, const std::string& model,
                        const std::string& device, int batch, int h, int w) {
  if (runs.empty()) fail("profile: no runs to summarise");
  ProfileReport r;
  r.model = model;
  r.device = device;
  r.batch = batch;
  r.repeats = int(runs.size());
  r.input_h = h;
  r.input_w = w;
  std::vector<double> totals;
  for (const auto& run : runs) {
    if (run.size() != runs[0].size()) fail("profile: runs have different layer counts");
    double t = 0;
    for (const auto& l : run) t += l.ms;
    totals.push_back(t);
  }
  r.total_ms = median(totals);
  for (size_t i = 0; i < runs[0].size(); ++i) {
    std::vector<double> ms;
    for (const auto& run : runs) ms.push_back(run[i].ms);
    const LayerTiming& l = runs[0][i];
    r.layers.push_back({l.name, l.kind, l.block, median(ms), l.macs, l.method});
  }
  return r;
}

std::string format_table(const ProfileReport& r) {
  std::string out;
  char line[256];
  std::snprintf(line, sizeof line, "%s on %s, batch %d, %dx%d, median of %d runs: %.3f ms\n", r.model.c_str(),
                r.device.c_str(), r.batch, r.input_h, r.input_w, r.repeats, r.total_ms);
  out += line;
  const bool peak = r.peak_gflops > 0;
  if (peak) {
    std::snprintf(line, sizeof line, "peak: %.1f GFLOP/s (this backend's GEMM, 768^3, measured now)\n", r.peak_gflops);
    out += line;
  }
  std::snprintf(line, sizeof line, "%-26s %-8s %10s %12s %10s %7s%s\n", "layer", "kind", "time_ms", "MMACs", "GFLOP/s",
                "share", peak ? "   %peak" : "");
  out += line;
  auto of_peak = [&](double gflops) {
    char cell[16];
    std::snprintf(cell, sizeof cell, " %7.1f%%", 100.0 * gflops / r.peak_gflops);
    return peak ? std::string(cell) : std::string();
  };
  int64_t macs = 0;
  double sum = 0;
  for (const auto& l : r.layers) sum += l.median_ms;
  for (const auto& l : r.layers) {
    std::snprintf(line, sizeof line, "%-26s %-8s %10.4f %12.2f %10.2f %6.1f%%", l.name.c_str(), l.kind.c_str(),
                  l.median_ms, double(l.macs) / 1e6, l.gflops(), sum > 0 ? 100.0 * l.median_ms / sum : 0.0);
    out += line + (l.macs > 0 ? of_peak(l.gflops()) : std::string()) + "\n";
    macs += l.macs;
  }
  const double total_gflops = sum > 0 ? 2.0 * double(macs) / (sum * 1e6) : 0.0;
  std::snprintf(line, sizeof line, "%-26s %-8s %10.4f %12.2f %10.2f %6.1f%%", "total", "", sum, double(macs) / 1e6,
                total_gflops, 100.0);
  out += line + of_peak(total_gflops) + "\n";
  if (r.call_ms > 0 && r.call_ms < sum) {
    // Per-layer events slow nothing down, so this means noise: too few
    // repeats, or a cold first run (--warmup 0) among them.
    std::snprintf(line, sizeof line,
                  "whole call without per-layer events: %.4f ms median, less than the layers' sum (too few repeats "
                  "or warm-up runs to compare them)\n",
                  r.call_ms);
    out += line;
  } else if (r.call_ms > 0) {
    std::snprintf(line, sizeof line,
                  "whole call without per-layer events: %.4f ms median; %.4f ms (%.1f%%) of it outside the layers "
                  "(input check and copies, launches, results)\n",
                  r.call_ms, r.call_ms - sum, r.call_ms > 0 ? 100.0 * (r.call_ms - sum) / r.call_ms : 0.0);
    out += line;
  }
  return out;
}

std::string to_json(const ProfileReport& r) {
  nlohmann::json j;
  j["model"] = r.model;
  j["device"] = r.device;
  j["batch"] = r.batch;
  j["input_size"] = {r.input_h, r.input_w};
  j["repeats"] = r.repeats;
  j["total_ms_median"] = r.total_ms;
  if (r.peak_gflops > 0) j["peak_gflops"] = r.peak_gflops;
  if (r.call_ms > 0) j["call_ms_median"] = r.call_ms;
  j["layers"] = nlohmann::json::array();
  for (const auto& l : r.layers) {
    j["layers"].push_back({{"name", l.name},
                           {"kind", l.kind},
                           {"block", l.block},
                           {"time_ms_median", l.median_ms},
                           {"macs", l.macs},
                           {"gflops", l.gflops()},
                           {"fraction_of_peak", r.peak_gflops > 0 ? l.gflops() / r.peak_gflops : 0.0}});
    if (!l.method.empty()) j["layers"].back()["method"] = l.method;
  }
  return j.dump(2) + "\n";
}

std::string to_chrome_trace(const std::vector<LayerTiming>& run, const std::string& model) {
  nlohmann::json events = nlohmann::json::array();
  events.push_back({{"name", "process_name"}, {"ph", "M"}, {"pid", 1}, {"args", {{"name", "gati " + model}}}});
  for (const auto& l : run) {
    events.push_back({{"name", l.name},
                      {"cat", l.kind},
                      {"ph", "X"},
                      {"pid", 1},
                      {"tid", 1},
                      {"ts", l.start_ms * 1000.0},
                      {"dur", l.ms * 1000.0},
                      {"args", {{"macs", l.macs}, {"block", l.block}}}});
    if (!l.method.empty()) events.back()["args"]["method"] = l.method;
  }
  return nlohmann::json{{"traceEvents", events}, {"displayTimeUnit", "ms"}}.dump() + "\n";
}

}  // namespace gati
