// The convolution plans chosen on one GPU, kept in a file so that a restart
// does not time cuDNN's candidates again.
//
// Design decision: what is stored is the choice, not cuDNN's plan: for the
// graph API the configuration's place in cuDNN's ranked list and its engine's
// global index (rebuilt from the same heuristics, and refused when the index
// differs), for the legacy API the algorithm and math type.  The file keeps
// one section per context (GPU, compute capability, cuDNN version, layout,
// precision and the switches that change which candidates compete): a store
// reads and rewrites its own section and leaves the others as they are.
// When two processes save, each keeps what the other chose unless it chose
// that shape itself.  The file is a cache, not an input a user wrote: a
// damaged one is reported once on stderr, ignored, and rewritten; a failed
// write is a warning.  Plain C++ (no CUDA), so the file handling is tested
// on every machine.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>

namespace gati::cuda {

struct PlanRecord {
  bool graph = true;    // the graph API, else the legacy one
  bool fused = false;   // graph: bias/residual/ReLU in the graph; legacy: cuDNN's fused call
  int rank = -1;        // graph: the configuration's place in cuDNN's ranked list
  int64_t engine = -1;  // graph: its engine's global index
  int algo = -1;        // legacy: cudnnConvolutionFwdAlgo_t
  int math = -1;        // legacy: cudnnMathType_t
  float ms = -1;        // the time that won, for logs
  bool operator==(const PlanRecord& o) const;
};

class PlanStore {
 public:
  // Loads `context`'s section of `path` if the file exists; an empty path
  // keeps the choices in memory only.
  PlanStore(std::string path, std::string context);

  std::optional<PlanRecord> find(const std::string& key) const;
  void put(const std::string& key, const PlanRecord& record);
  // Writes the file when something was added since the last save, merged
  // with what another process may have written there meanwhile (its other
  // sections, and in this one the shapes this store did not choose);
  // returns false (with a warning on stderr) when the write failed.
  bool save();

  const std::string& path() const { return path_; }
  // Why the file was not used, when it was not ("" otherwise).
  const std::string& ignored() const { return ignored_; }
  size_t size() const;

  static constexpr size_t kMaxBytes = size_t(16) << 20;
  static constexpr size_t kMaxRecords = 100000;

 private:
  using Sections = std::map<std::string, std::map<std::string, PlanRecord>>;  // context -> key -> choice
  // The file's sections, or nothing with the reason in *why.
  std::optional<Sections> read(std::string* why) const;

  const std::string path_, context_;
  std::string ignored_;
  mutable std::mutex mu_;
  std::map<std::string, PlanRecord> records_;
  std::set<std::string> mine_;  // keys chosen by this store (they win over the file's)
  bool dirty_ = false;
};

// GATI_CUDNN_PLANS if set ("off": no file), else
// $XDG_CACHE_HOME/gati/cudnn-plans.json, else ~/.cache/gati/cudnn-plans.json,
// else "" (no home: nothing persisted).
std::string default_plan_store_path();

}  // namespace gati::cuda
