// Small helpers for the gati command line: option parsing with clear errors,
// a progress bar that shows only on a terminal, and percentiles.
#pragma once

#include <chrono>
#include <map>
#include <set>
#include <string>
#include <vector>

namespace gati::cli {

class Args {
 public:
  // Parses argv[start..]; `valued` options take one value, `flags` none.
  // Unknown options throw, listing the valid ones.
  Args(int argc, char** argv, int start, const std::set<std::string>& valued, const std::set<std::string>& flags);

  bool has(const std::string& name) const { return values_.count(name) || flags_.count(name); }
  std::string get(const std::string& name, const std::string& fallback = "") const;
  std::string require(const std::string& name) const;
  int get_int(const std::string& name, int fallback, int lo, int hi) const;
  double get_double(const std::string& name, double fallback, double lo, double hi) const;
  const std::vector<std::string>& positional() const { return positional_; }

 private:
  std::map<std::string, std::string> values_;
  std::set<std::string> flags_;
  std::vector<std::string> positional_;
};

class Progress {
 public:
  Progress(size_t total, std::string label);
  ~Progress();
  void update(size_t done, const std::string& extra = "");
  void finish();

 private:
  size_t total_;
  std::string label_;
  bool enabled_;
  bool finished_ = false;
  std::chrono::steady_clock::time_point start_, last_;
};

// p in [0, 100], nearest-rank on a sorted copy.
double percentile(std::vector<double> v, double p);

}  // namespace gati::cli
