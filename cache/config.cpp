// The cache build's settings as JSON; see config.h.
#include "cache/config.h"

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <initializer_list>
#include <sstream>

#include "engine/backend.h"
#include "kernels/exit_state.h"
#include "weights/common/error.h"
#include "weights/common/file_write.h"
#include "weights/common/json_read.h"

namespace gati {
namespace {

constexpr const char* kFormat = "gati-cache-config/1";
constexpr size_t kMaxConfigBytes = size_t(1) << 20;

std::string listed(std::initializer_list<const char*> names) {
  std::string s;
  for (const char* n : names) s += (s.empty() ? "" : ", ") + std::string(n);
  return s;
}

// A string that must be one of `valid`.
std::string one_of(const JsonFields& f, const std::string& key, std::initializer_list<const char*> valid) {
  const std::string v = f.string(key);
  for (const char* n : valid)
    if (v == n) return v;
  fail(f.where_of(key), " is '", v, "' (valid: ", listed(valid), ")");
}

// A pooling name parse_pool knows (or "auto" where allowed).
std::string pool_of(const JsonFields& f, const std::string& key, bool allow_auto) {
  const std::string v = f.string(key);
  if (allow_auto && v == "auto") return v;
  try {
    parse_pool(v);
  } catch (const Error& e) {
    fail(f.where_of(key), ": ", e.what(), allow_auto ? " (or auto)" : "");
  }
  return v;
}

HeadKind kind_of(const JsonFields& f, const std::string& key) {
  return head_kind(one_of(f, key, {"linear", "knn", "kmeans"}));
}

}  // namespace

BuildOptions build_options_from_json(const nlohmann::json& j, const std::string& where) {
  const JsonFields f(j, where);
  json_only_keys(j, where,
                 {"format",
                  "kind",
                  "pool",
                  "target_agreement",
                  "rule",
                  "calibrate",
                  "calibrate_on",
                  "traffic_requests",
                  "never_hit_budget",
                  "cost",
                  "auto_pool_budget",
                  "train",
                  "holdout",
                  "batch",
                  "selector",
                  "hidden",
                  "sgd",
                  "approx",
                  "memory",
                  "exits"});
  BuildOptions o;
  if (f.has("format") && f.string("format") != kFormat)
    fail(f.where_of("format"), " is '", f.string("format"), "' (valid: ", kFormat, ")");
  if (f.has("kind")) o.kind = kind_of(f, "kind");
  if (f.has("pool")) o.pool = pool_of(f, "pool", true);
  if (f.has("target_agreement")) o.target_agreement = f.number("target_agreement", 0.5, 1.0);
  if (f.has("rule")) o.rule = threshold_rule(one_of(f, "rule", {"bound", "target", "zero-error"}));
  if (f.has("calibrate")) o.cascade = one_of(f, "calibrate", {"cascade", "per-exit"}) == "cascade";
  if (f.has("calibrate_on"))
    o.perturbed_holdout = one_of(f, "calibrate_on", {"clean", "clean+shifted"}) == "clean+shifted";
  if (f.has("traffic_requests")) o.traffic_requests = f.number("traffic_requests", 0, 1e12);
  if (f.has("never_hit_budget")) o.never_hit_budget = f.number("never_hit_budget", 1e-6, 1.0);
  if (f.has("cost")) o.cost = cost_model(one_of(f, "cost", {"measured", "macs"}));
  if (f.has("auto_pool_budget")) o.auto_pool_budget = f.number("auto_pool_budget", 1e-6, 1.0);
  if (f.has("train")) o.train = int(f.integer("train", 1, 60000));
  if (f.has("holdout")) o.holdout = int(f.integer("holdout", 1, 60000));
  if (f.has("batch")) o.batch = int(f.integer("batch", 1, 4096));
  if (f.has("selector")) o.selector = int(f.integer("selector", 0, kMaxSelectorK));
  if (f.has("hidden")) o.hidden = int(f.integer("hidden", 0, kMaxHidden));
  if (f.has("sgd")) {
    const JsonFields s = f.object("sgd");
    json_only_keys(
        f.at("sgd"), s.where(),
        {"epochs", "batch", "lr", "momentum", "weight_decay", "seed", "distill_alpha", "distill_temperature"});
    if (s.has("epochs")) o.sgd.epochs = int(s.integer("epochs", 1, 1000));
    if (s.has("batch")) o.sgd.batch = int(s.integer("batch", 1, 65536));
    if (s.has("lr")) o.sgd.lr = float(s.number("lr", 1e-8, 10));
    if (s.has("momentum")) o.sgd.momentum = float(s.number("momentum", 0, 0.999));
    if (s.has("weight_decay")) o.sgd.weight_decay = float(s.number("weight_decay", 0, 1));
    if (s.has("seed")) o.sgd.seed = uint32_t(s.integer("seed", 0, UINT32_MAX));
    if (s.has("distill_alpha")) o.sgd.distill_alpha = float(s.number("distill_alpha", 0, 1));
    if (s.has("distill_temperature")) o.sgd.distill_temperature = float(s.number("distill_temperature", 0.01, 100));
  }
  if (f.has("approx")) {
    const JsonFields a = f.object("approx");
    json_only_keys(f.at("approx"), a.where(),
                   {"reduced", "knn_entries", "neighbours", "centroids", "kmeans_samples", "iterations", "seed"});
    if (a.has("reduced")) o.approx.reduced = int(a.integer("reduced", 1, 4096));
    if (a.has("knn_entries")) o.approx.knn_entries = int(a.integer("knn_entries", 0, 60000));
    if (a.has("neighbours")) o.approx.neighbours = int(a.integer("neighbours", 1, kMaxNeighbours));
    if (a.has("centroids")) o.approx.centroids = int(a.integer("centroids", 1, 60000));
    if (a.has("kmeans_samples")) o.approx.kmeans_samples = int(a.integer("kmeans_samples", 0, 60000));
    if (a.has("iterations")) o.approx.iterations = int(a.integer("iterations", 1, 1000));
    if (a.has("seed")) o.approx.seed = uint32_t(a.integer("seed", 0, UINT32_MAX));
  }
  if (f.has("memory")) {
    const JsonFields m = f.object("memory");
    json_only_keys(f.at("memory"), m.where(), {"enabled", "pool", "capacity", "min_confidence", "requests"});
    if (m.has("enabled")) o.memory = m.boolean("enabled");
    if (m.has("pool")) o.memory_pool = pool_of(m, "pool", false);
    if (m.has("capacity")) o.memory_capacity = int(m.integer("capacity", 1, 1 << 20));
    if (m.has("min_confidence")) o.memory_min_confidence = float(m.number("min_confidence", 0, 1));
    if (m.has("requests")) o.memory_requests = int(m.integer("requests", 1, 10000000));
  }
  if (f.has("exits")) {
    const JsonFields all = f.object("exits");
    const nlohmann::json& exits = f.at("exits");
    for (auto it = exits.begin(); it != exits.end(); ++it) {
      const JsonFields e(it.value(), str_cat(all.where(), " '", it.key(), "'"));
      json_only_keys(it.value(), e.where(), {"enabled", "kind", "pool", "hidden"});
      ExitSetting s;
      if (e.has("enabled")) s.enabled = e.boolean("enabled");
      if (e.has("kind")) s.kind = kind_of(e, "kind");
      if (e.has("pool")) s.pool = pool_of(e, "pool", false);
      if (e.has("hidden")) s.hidden = int(e.integer("hidden", 0, kMaxHidden));
      o.exits[it.key()] = s;
    }
  }
  return o;
}

BuildOptions load_build_config(const std::string& path) {
  require_regular_file(path, "cache configuration");
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path, ": cannot open the cache configuration");
  std::ostringstream text;
  text << in.rdbuf();
  if (text.str().size() > kMaxConfigBytes)
    fail(path, ": ", text.str().size(), " bytes, more than a cache configuration's limit of ", kMaxConfigBytes);
  const nlohmann::json j = json_parse(text.str(), path + ": the cache configuration");
  return build_options_from_json(j, path);
}

nlohmann::ordered_json build_options_to_json(const BuildOptions& o) {
  // A float setting as the shortest decimal that reads back to it (0.99,
  // not 0.9900000095367432).
  auto shortest = [](float v) {
    char text[32];
    for (int digits = 1; digits <= 9; ++digits) {
      std::snprintf(text, sizeof text, "%.*g", digits, double(v));
      if (std::strtof(text, nullptr) == v) break;
    }
    return std::strtod(text, nullptr);
  };
  nlohmann::ordered_json exits = nlohmann::ordered_json::object();
  for (const auto& [name, s] : o.exits) {
    nlohmann::ordered_json e = {{"enabled", s.enabled}};
    if (s.kind) e["kind"] = head_kind_name(*s.kind);
    if (!s.pool.empty()) e["pool"] = s.pool;
    if (s.hidden) e["hidden"] = *s.hidden;
    exits[name] = e;
  }
  return {{"format", kFormat},
          {"kind", head_kind_name(o.kind)},
          {"pool", o.pool},
          {"target_agreement", o.target_agreement},
          {"rule", threshold_rule_name(o.rule)},
          {"calibrate", o.cascade ? "cascade" : "per-exit"},
          {"calibrate_on", o.perturbed_holdout ? "clean+shifted" : "clean"},
          {"traffic_requests", o.traffic_requests},
          {"never_hit_budget", o.never_hit_budget},
          {"cost", cost_model_name(o.cost)},
          {"auto_pool_budget", o.auto_pool_budget},
          {"train", o.train},
          {"holdout", o.holdout},
          {"batch", o.batch},
          {"selector", o.selector},
          {"hidden", o.hidden},
          {"sgd",
           {{"epochs", o.sgd.epochs},
            {"batch", o.sgd.batch},
            {"lr", shortest(o.sgd.lr)},
            {"momentum", shortest(o.sgd.momentum)},
            {"weight_decay", shortest(o.sgd.weight_decay)},
            {"seed", o.sgd.seed},
            {"distill_alpha", shortest(o.sgd.distill_alpha)},
            {"distill_temperature", shortest(o.sgd.distill_temperature)}}},
          {"approx",
           {{"reduced", o.approx.reduced},
            {"knn_entries", o.approx.knn_entries},
            {"neighbours", o.approx.neighbours},
            {"centroids", o.approx.centroids},
            {"kmeans_samples", o.approx.kmeans_samples},
            {"iterations", o.approx.iterations},
            {"seed", o.approx.seed}}},
          {"memory",
           {{"enabled", o.memory},
            {"pool", o.memory_pool},
            {"capacity", o.memory_capacity},
            {"min_confidence", shortest(o.memory_min_confidence)},
            {"requests", o.memory_requests}}},
          {"exits", exits}};
}

}  // namespace gati
