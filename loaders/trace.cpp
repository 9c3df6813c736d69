// Request traces; see trace.h.
#include "loaders/trace.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>

#include "weights/common/error.h"
#include "weights/common/file_write.h"
#include "weights/common/json_read.h"

namespace gati {

const std::vector<std::string>& trace_kinds() {
  static const std::vector<std::string> k = {"uniform", "zipf", "locality", "drift"};
  return k;
}

Trace make_trace(const std::string& kind, const Dataset& data, int n, uint64_t seed, const TraceParams& p) {
  if (std::find(trace_kinds().begin(), trace_kinds().end(), kind) == trace_kinds().end())
    fail("trace: unknown kind '", kind, "' (valid: uniform, zipf, locality, drift)");
  if (n < 1) fail("trace: need at least one request, got ", n);
  if (data.n < 1) fail("trace: data set ", data.name, " is empty");
  if (!(p.zipf_s > 0)) fail("trace: zipf_s must be positive");
  if (!(p.locality_p >= 0 && p.locality_p <= 1)) fail("trace: locality_p must be in [0, 1]");
  if (p.drift_period < 1) fail("trace: drift_period must be at least 1");
  Trace t;
  t.kind = kind;
  t.seed = seed;
  t.params = p;
  t.source = data.name;
  t.source_size = data.n;
  std::mt19937_64 rng(seed);
  std::vector<std::vector<int>> by_class(size_t(data.classes));
  for (int i = 0; i < data.n; ++i) by_class[size_t(data.labels[size_t(i)])].push_back(i);
  std::vector<int> classes;
  for (int c = 0; c < data.classes; ++c)
    if (!by_class[size_t(c)].empty()) classes.push_back(c);
  auto item_of = [&](int c) {
    const auto& v = by_class[size_t(c)];
    return v[std::uniform_int_distribution<size_t>(0, v.size() - 1)(rng)];
  };
  std::uniform_real_distribution<double> u(0, 1);
  std::vector<int> ranking = classes;
  std::shuffle(ranking.begin(), ranking.end(), rng);
  std::vector<double> zipf_w;
  for (size_t r = 0; r < ranking.size(); ++r) zipf_w.push_back(1.0 / std::pow(double(r + 1), p.zipf_s));
  std::discrete_distribution<size_t> zipf(zipf_w.begin(), zipf_w.end());
  int cls = classes[std::uniform_int_distribution<size_t>(0, classes.size() - 1)(rng)];
  std::vector<int> favoured;
  for (int i = 0; i < n; ++i) {
    Request r;
    if (kind == "uniform") {
      r.index = std::uniform_int_distribution<int>(0, data.n - 1)(rng);
    } else if (kind == "zipf") {
      r.index = item_of(ranking[zipf(rng)]);
    } else if (kind == "drift") {
      if (i % p.drift_period == 0) {
        favoured = classes;
        std::shuffle(favoured.begin(), favoured.end(), rng);
        favoured.resize(std::min<size_t>(3, favoured.size()));
      }
      const bool fav = u(rng) < 0.8;
      r.index = fav ? item_of(favoured[std::uniform_int_distribution<size_t>(0, favoured.size() - 1)(rng)])
                    : item_of(classes[std::uniform_int_distribution<size_t>(0, classes.size() - 1)(rng)]);
    } else {  // locality
      if (i > 0 && u(rng) < p.locality_p) {
        r = t.requests.back();
        r.dx = std::clamp(r.dx + std::uniform_int_distribution<int>(-1, 1)(rng), -2, 2);
        r.dy = std::clamp(r.dy + std::uniform_int_distribution<int>(-1, 1)(rng), -2, 2);
        r.noise = 0.02f;
        r.noise_seed = uint32_t(rng());
        t.requests.push_back(r);
        continue;
      }
      if (i > 0 && u(rng) >= p.locality_p)
        cls = classes[std::uniform_int_distribution<size_t>(0, classes.size() - 1)(rng)];
      r.index = item_of(cls);
    }
    t.requests.push_back(r);
  }
  return t;
}

void save_trace(const std::string& path, const Trace& t) {
  nlohmann::json j = {
      {"format", "gati-trace/1"},
      {"kind", t.kind},
      {"seed", t.seed},
      {"params",
       {{"zipf_s", t.params.zipf_s}, {"locality_p", t.params.locality_p}, {"drift_period", t.params.drift_period}}},
      {"source", t.source},
      {"source_size", t.source_size}};
  nlohmann::json reqs = nlohmann::json::array();
  for (const Request& r : t.requests) reqs.push_back({r.index, r.dx, r.dy, r.noise, r.noise_seed});
  j["requests"] = reqs;
  const std::string text = j.dump() + "\n";
  write_file_atomically(path, [&](std::ostream& out) { out << text; });
}

Trace load_trace(const std::string& path, const Dataset& data) {
  require_regular_file(path, "trace");
  std::error_code ec;
  const uintmax_t bytes = std::filesystem::file_size(path, ec);
  if (!ec && bytes > kMaxTraceBytes)
    fail(path, ": ", bytes, " bytes, more than a trace of ", kMaxTraceRequests, " requests needs (at most ",
         kMaxTraceBytes, ")");
  std::ifstream f(path, std::ios::binary);
  if (!f) fail(path, ": cannot open trace");
  const std::string text((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  const nlohmann::json j = json_parse(text, path + ": trace");
  Trace t;
  const JsonFields top(j, path);
  json_only_keys(j, path, {"format", "kind", "seed", "params", "source", "source_size", "requests"});
  if (j.contains("params")) json_only_keys(j["params"], path + ": 'params'", {"zipf_s", "locality_p", "drift_period"});
  if (top.string("format") != "gati-trace/1") fail(path, ": unknown trace format (expected gati-trace/1)");
  t.kind = top.string("kind");
  t.seed = uint64_t(top.integer("seed", 0, INT64_MAX));
  t.source = top.string("source");
  t.source_size = int(top.integer("source_size", 0, INT32_MAX));
  const nlohmann::json& reqs = top.array("requests");
  if (reqs.size() > kMaxTraceRequests)
    fail(path, ": ", reqs.size(), " requests, more than the limit of ", kMaxTraceRequests, " per trace (split it)");
  for (size_t i = 0; i < reqs.size(); ++i) {
    const auto& r = reqs[i];
    if (!r.is_array() || r.size() != 5) fail(path, ": request ", i, " must be [index, dx, dy, noise, noise_seed]");
    const std::string at = str_cat(path, ": request ", i);
    const int64_t index = json_integer(r[0], at + " index", 0, INT32_MAX);
    if (index >= data.n) fail(path, ": request ", i, " names item ", index, ", but ", data.name, " has ", data.n);
    Request q;
    q.index = int(index);
    q.dx = int(json_integer(r[1], at + " dx", -8, 8));
    q.dy = int(json_integer(r[2], at + " dy", -8, 8));
    q.noise = float(json_number(r[3], at + " noise", 0, 1));
    q.noise_seed = uint32_t(json_integer(r[4], at + " noise_seed", 0, UINT32_MAX));
    t.requests.push_back(q);
  }
  if (t.source != data.name) fail(path, ": trace was made for ", t.source, ", replaying on ", data.name);
  if (t.source_size != data.n)
    fail(path, ": trace was made for ", t.source, " with ", t.source_size, " items; ", data.name, " has ", data.n);
  return t;
}

void render(const Dataset& data, const Request& r, float* out) {
  const float* src = data.image(r.index);
  std::mt19937 rng(r.noise_seed);
  std::normal_distribution<float> noise(0.f, r.noise > 0 ? r.noise : 1.f);
  for (int c = 0; c < data.c; ++c)
    for (int y = 0; y < data.h; ++y)
      for (int x = 0; x < data.w; ++x) {
        const int sy = y - r.dy, sx = x - r.dx;
        float v = (sy >= 0 && sy < data.h && sx >= 0 && sx < data.w)
                      ? src[(size_t(c) * size_t(data.h) + size_t(sy)) * size_t(data.w) + size_t(sx)]
                      : 0.f;
        if (r.noise > 0) v += noise(rng);
        out[(size_t(c) * size_t(data.h) + size_t(y)) * size_t(data.w) + size_t(x)] = std::clamp(v, 0.f, 1.f);
      }
}

}  // namespace gati
