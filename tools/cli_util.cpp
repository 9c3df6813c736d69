// Command-line helpers; see cli_util.h.
#include "tools/cli_util.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "engine/error.h"

namespace gati::cli {

Args::Args(int argc, char** argv, int start, const std::set<std::string>& valued, const std::set<std::string>& flags) {
  for (int i = start; i < argc; ++i) {
    const std::string a = argv[i];
    if (a.rfind("--", 0) != 0 || a == "--") {
      positional_.push_back(a);
      continue;
    }
    std::string name = a.substr(2), value;
    const size_t eq = name.find('=');
    const bool inline_value = eq != std::string::npos;
    if (inline_value) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    }
    if (valued.count(name)) {
      if (!inline_value) {
        if (i + 1 >= argc) fail("option --", name, " needs a value");
        value = argv[++i];
      }
      values_[name] = value;
    } else if (flags.count(name) && !inline_value) {
      flags_.insert(name);
    } else {
      std::string valid;
      for (const auto& v : valued) valid += " --" + v;
      for (const auto& f : flags) valid += " --" + f;
      fail("unknown option --", name, " (valid:", valid.empty() ? " none" : valid, ")");
    }
  }
}

std::string Args::get(const std::string& name, const std::string& fallback) const {
  auto it = values_.find(name);
  return it == values_.end() ? fallback : it->second;
}

std::string Args::require(const std::string& name) const {
  auto it = values_.find(name);
  if (it == values_.end()) fail("missing required option --", name);
  return it->second;
}

int Args::get_int(const std::string& name, int fallback, int lo, int hi) const {
  auto it = values_.find(name);
  if (it == values_.end()) return fallback;
  size_t used = 0;
  long v = 0;
  try {
    v = std::stol(it->second, &used);
  } catch (...) {
    used = 0;
  }
  if (used != it->second.size() || it->second.empty()) fail("--", name, " must be an integer, got '", it->second, "'");
  if (v < lo || v > hi) fail("--", name, " = ", v, " is outside [", lo, ", ", hi, "]");
  return int(v);
}

double Args::get_double(const std::string& name, double fallback, double lo, double hi) const {
  auto it = values_.find(name);
  if (it == values_.end()) return fallback;
  size_t used = 0;
  double v = 0;
  try {
    v = std::stod(it->second, &used);
  } catch (...) {
    used = 0;
  }
  if (used != it->second.size() || !std::isfinite(v)) fail("--", name, " must be a number, got '", it->second, "'");
  if (v < lo || v > hi) fail("--", name, " = ", v, " is outside [", lo, ", ", hi, "]");
  return v;
}

Progress::Progress(size_t total, std::string label)
    : total_(total),
      label_(std::move(label)),
      enabled_(isatty(STDERR_FILENO) != 0),
      start_(std::chrono::steady_clock::now()),
      last_(start_) {}

Progress::~Progress() { finish(); }

void Progress::update(size_t done, const std::string& extra) {
  if (!enabled_ || finished_) return;
  const auto now = std::chrono::steady_clock::now();
  if (done < total_ && now - last_ < std::chrono::milliseconds(100)) return;
  last_ = now;
  const double frac = total_ ? double(done) / double(total_) : 1.0;
  const int width = 30, filled = int(frac * width);
  const double secs = std::chrono::duration<double>(now - start_).count();
  const double eta = frac > 0 ? secs * (1 - frac) / frac : 0;
  std::fprintf(stderr, "\r%s [%s%s] %zu/%zu %5.1f%% %.0fs eta %.0fs %s", label_.c_str(),
               std::string(size_t(filled), '#').c_str(), std::string(size_t(width - filled), '.').c_str(), done, total_,
               100 * frac, secs, eta, extra.c_str());
  std::fflush(stderr);
}

void Progress::finish() {
  if (enabled_ && !finished_) std::fprintf(stderr, "\n");
  finished_ = true;
}

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const double rank = std::ceil(p / 100.0 * double(v.size()));
  const size_t idx = size_t(std::clamp(rank, 1.0, double(v.size()))) - 1;
  return v[idx];
}

}  // namespace gati::cli
