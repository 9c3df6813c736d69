// The file of chosen convolution plans; see plan_store.h.
#include "kernels/cuda/plan_store.h"

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "weights/common/error.h"
#include "weights/common/file_write.h"
#include "weights/common/json_read.h"

namespace gati::cuda {

namespace fs = std::filesystem;

namespace {

constexpr const char* kFormat = "gati-cudnn-plans/1";

PlanRecord record_from_json(const nlohmann::json& j, const std::string& where) {
  json_only_keys(j, where, {"api", "fused", "rank", "engine", "algo", "math", "ms"});
  const JsonFields f(j, where);
  PlanRecord r;
  const std::string api = f.string("api");
  if (api != "graph" && api != "legacy") fail(f.where_of("api"), " is '", api, "' (valid: graph, legacy)");
  r.graph = api == "graph";
  r.fused = f.boolean("fused");
  if (r.graph) {
    r.rank = int(f.integer("rank", 0, 127));
    r.engine = f.integer("engine", 0, INT32_MAX);
  } else {
    r.algo = int(f.integer("algo", 0, 63));
    r.math = int(f.integer("math", 0, 63));
  }
  r.ms = float(f.number("ms", -1, 1e6));
  return r;
}

nlohmann::json record_to_json(const PlanRecord& r) {
  nlohmann::json j = {{"api", r.graph ? "graph" : "legacy"}, {"fused", r.fused}, {"ms", r.ms}};
  if (r.graph) {
    j["rank"] = r.rank;
    j["engine"] = r.engine;
  } else {
    j["algo"] = r.algo;
    j["math"] = r.math;
  }
  return j;
}

}  // namespace

bool PlanRecord::operator==(const PlanRecord& o) const {
  return graph == o.graph && fused == o.fused && rank == o.rank && engine == o.engine && algo == o.algo &&
         math == o.math;
}

PlanStore::PlanStore(std::string path, std::string context) : path_(std::move(path)), context_(std::move(context)) {
  if (path_.empty()) return;
  std::error_code ec;
  if (!fs::exists(path_, ec)) return;
  std::string why;
  if (auto loaded = read(&why)) {
    records_ = std::move((*loaded)[context_]);
  } else {
    ignored_ = why;
    std::fprintf(stderr, "gati: ignoring the cuDNN plan cache %s (%s); plans are timed again and the file rewritten\n",
                 path_.c_str(), why.c_str());
  }
}

std::optional<PlanStore::Sections> PlanStore::read(std::string* why) const {
  try {
    require_regular_file(path_, "cuDNN plan cache");
    std::error_code ec;
    const uintmax_t bytes = fs::file_size(path_, ec);
    if (ec) fail("cannot read its size (", ec.message(), ")");
    if (bytes > kMaxBytes) fail(bytes, " bytes, over the limit of ", kMaxBytes);
    std::ifstream in(path_, std::ios::binary);
    if (!in) fail("cannot open it");
    std::stringstream text;
    text << in.rdbuf();
    const nlohmann::json j = json_parse(text.str(), "the file");
    json_only_keys(j, path_, {"format", "contexts"});
    const JsonFields top(j, path_);
    if (top.string("format") != kFormat) fail("format is not ", kFormat);
    const JsonFields contexts = top.object("contexts");
    Sections out;
    size_t total = 0;
    for (auto c = top.at("contexts").begin(); c != top.at("contexts").end(); ++c) {
      const JsonFields plans = contexts.object(c.key());
      total += c.value().size();
      if (total > kMaxRecords) fail("more than ", kMaxRecords, " plans");
      std::map<std::string, PlanRecord>& section = out[c.key()];
      for (auto it = c.value().begin(); it != c.value().end(); ++it)
        section[it.key()] = record_from_json(it.value(), plans.where_of(it.key()));
    }
    return out;
  } catch (const Error& e) {
    *why = e.what();
    return std::nullopt;
  }
}

std::optional<PlanRecord> PlanStore::find(const std::string& key) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = records_.find(key);
  if (it == records_.end()) return std::nullopt;
  return it->second;
}

void PlanStore::put(const std::string& key, const PlanRecord& record) {
  std::lock_guard<std::mutex> lock(mu_);
  auto [it, added] = records_.try_emplace(key, record);
  if (!added && it->second == record) return;
  if (added && records_.size() > kMaxRecords) {  // a bound, not a policy: kept in memory only
    records_.erase(it);
    return;
  }
  it->second = record;
  mine_.insert(key);
  dirty_ = true;
}

size_t PlanStore::size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return records_.size();
}

bool PlanStore::save() {
  std::lock_guard<std::mutex> lock(mu_);
  if (path_.empty() || !dirty_) return true;
  // What another process wrote meanwhile stays: its other sections, and in
  // ours every shape this store did not choose itself.
  std::error_code ec;
  std::string why;
  Sections all;
  if (fs::exists(path_, ec))
    if (auto theirs = read(&why)) all = std::move(*theirs);
  std::map<std::string, PlanRecord>& ours = all[context_];
  for (const auto& [key, r] : records_)
    if (mine_.count(key) || !ours.count(key)) ours[key] = r;
  records_ = ours;
  nlohmann::json contexts = nlohmann::json::object();
  for (const auto& [context, section] : all) {
    nlohmann::json plans = nlohmann::json::object();
    for (const auto& [key, r] : section) plans[key] = record_to_json(r);
    contexts[context] = plans;
  }
  const nlohmann::json j = {{"format", kFormat}, {"contexts", contexts}};
  try {
    const fs::path folder = fs::path(path_).parent_path();
    if (!folder.empty()) fs::create_directories(folder, ec);
    write_file_atomically(path_, [&](std::ostream& out) { out << j.dump(1) << "\n"; });
  } catch (const Error& e) {
    std::fprintf(stderr, "gati: could not save the cuDNN plan cache (%s); the next start times the plans again\n",
                 e.what());
    return false;
  }
  dirty_ = false;
  return true;
}

std::string default_plan_store_path() {
  if (const char* v = std::getenv("GATI_CUDNN_PLANS")) return std::string(v) == "off" ? std::string() : v;
  if (const char* x = std::getenv("XDG_CACHE_HOME"); x && *x) return std::string(x) + "/gati/cudnn-plans.json";
  if (const char* h = std::getenv("HOME"); h && *h) return std::string(h) + "/.cache/gati/cudnn-plans.json";
  return {};
}

}  // namespace gati::cuda
