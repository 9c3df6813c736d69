// Trace replay; see replay.h.
#include "cache/replay.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <nlohmann/json.hpp>

#include "cache/build.h"
#include "cache/online.h"
#include "engine/plan.h"
#include "engine/profile.h"

namespace gati {

int64_t ReplayReport::hits() const {
  int64_t h = memory.hits;
  for (const ExitStats& e : exits) h += e.hits;
  return h;
}
double ReplayReport::hit_rate() const { return requests.empty() ? 0 : double(hits()) / double(requests.size()); }
double ReplayReport::agreement() const {
  int64_t a = 0;
  for (const RequestRecord& r : requests) a += r.label == r.full_label;
  return requests.empty() ? 0 : double(a) / double(requests.size());
}
double ReplayReport::hit_agreement() const {
  int64_t a = memory.hit_agree;
  for (const ExitStats& e : exits) a += e.hit_agree;
  return hits() ? double(a) / double(hits()) : 1.0;
}
double ReplayReport::accuracy_caches() const {
  int64_t a = 0;
  for (const RequestRecord& r : requests) a += r.label == r.truth;
  return requests.empty() ? 0 : double(a) / double(requests.size());
}
double ReplayReport::accuracy_full() const {
  int64_t a = 0;
  for (const RequestRecord& r : requests) a += r.full_label == r.truth;
  return requests.empty() ? 0 : double(a) / double(requests.size());
}
double ReplayReport::latency_mean_us(bool caches) const {
  double s = 0;
  for (const RequestRecord& r : requests) s += caches ? r.latency_us : r.full_latency_us;
  return requests.empty() ? 0 : s / double(requests.size());
}
double ReplayReport::latency_percentile_us(bool caches, double p) const {
  std::vector<double> v;
  v.reserve(requests.size());
  for (const RequestRecord& r : requests) v.push_back(caches ? r.latency_us : r.full_latency_us);
  return percentile(std::move(v), p);
}

double ReplayReport::macs_mean() const {
  double s = 0;
  for (const RequestRecord& r : requests) s += r.macs;
  return requests.empty() ? 0 : s / double(requests.size());
}

namespace {

// What a request costs in MACs with a set of heads and a memory: the
// network up to each exit point, each enabled head, the memory's lookup.
struct MacsModel {
  std::vector<double> through, head;  // [exit point]; head 0 where none is enabled
  int memory_exit = -1;
  double memory = 0, full = 0;

  MacsModel(const Engine& engine, const CacheSet& caches, const AnswerMemory* mem) {
    const Plan plan = make_plan(engine.model().net, 1, engine.arch().input_h, engine.arch().input_w);
    full = double(plan.macs_per_sample);
    for (const ExitPoint& e : plan.exits) through.push_back(double(macs_through(plan, e.id)));
    head.assign(plan.exits.size(), 0);
    for (const ExitCache& c : caches.exits)
      if (c.enabled()) head[size_t(c.exit)] = double(exit_head_macs(plan.exits[size_t(c.exit)].shape, c));
    if (mem) {
      const MemorySpec& m = mem->spec();
      memory_exit = m.exit;
      memory = double(exit_head_macs(plan.exits[size_t(m.exit)].shape, m.pool, m.dim, m.capacity));
    }
  }
  // A request that left at `exit` (kFullModel: none), by the memory or not.
  double cost(int exit, bool by_memory) const {
    double spent = 0;
    for (size_t e = 0; e < through.size(); ++e) {
      if (int(e) == memory_exit) spent += memory;
      if (by_memory && int(e) == exit) return through[e] + spent;
      spent += head[e];
      if (int(e) == exit) return through[e] + spent;
    }
    return full + spent;
  }
};

size_t cache_bytes(const CacheSet& caches, const AnswerMemory* mem) {
  size_t b = 0;
  for (const ExitCache& c : caches.exits)
    if (c.enabled())
      b += 4 * (c.mean.size() + c.inv_std.size() + c.weight.size() + c.bias.size() + c.hidden_weight.size() +
                c.hidden_bias.size() + c.projection.size() + c.keys.size() + c.labels.size() + c.share.size());
  if (mem) b += size_t(mem->spec().capacity) * (size_t(mem->spec().dim) + 2) * 4;
  return b;
}

std::string kinds_of(const CacheSet& caches) {
  std::vector<std::string> k;
  for (const ExitCache& c : caches.exits)
    if (c.enabled() && std::find(k.begin(), k.end(), head_description(c)) == k.end()) k.push_back(head_description(c));
  if (k.empty()) return "none";
  std::sort(k.begin(), k.end());
  std::string out;
  for (const std::string& x : k) out += (out.empty() ? "" : "+") + x;
  return out;
}

}  // namespace

ReplayReport replay_trace(const Engine& engine, const CacheSet& caches, const Dataset& test, const Trace& trace,
                          const ReplayOptions& o) {
  check_data_fits(engine, test, engine.model().path.empty() ? engine.arch().name : engine.model().path);
  if (o.batch < 1) fail("replay: batch must be at least 1, got ", o.batch);
  if (trace.source_size != 0 && trace.source_size != test.n)
    fail("replay: the trace refers to a data set of ", trace.source_size, " items, ", test.name, " has ", test.n);
  for (const Request& r : trace.requests)
    if (r.index < 0 || r.index >= test.n) fail("replay: trace item ", r.index, " is outside ", test.name);
  if (o.online.in_backend && (!o.online.sgd || o.online.feedback > 0 || o.online.guard || o.online.prior))
    fail(
        "replay: learning in the backend is SGD from the full model's own answers: it needs online SGD, and takes "
        "no feedback, guard or prior");
  if (o.online.in_backend)
    for (const ExitCache& c : caches.exits)
      if (c.enabled() && c.kind == HeadKind::kLinear && c.hidden > 0)
        fail("replay: learning in the backend trains linear heads; exit '", c.name, "' is an MLP (", c.hidden,
             " hidden units), which online SGD on the host trains (or build the caches with --hidden 0)");
  const Arch& a = engine.arch();
  std::shared_ptr<const ExitHeads> heads = engine.make_exit_heads(caches.head_specs());
  Session session = engine.session();
  std::unique_ptr<AnswerMemory> memory;
  if (o.memory && caches.memory) memory = session.make_memory(*caches.memory);

  ReplayReport rep;
  rep.trace_kind = trace.kind;
  rep.seed = trace.seed;
  rep.data_name = test.name;
  rep.model_arch = a.name;
  rep.batch = o.batch;
  const MacsModel macs(engine, caches, memory.get());
  rep.macs_full = macs.full;
  rep.cache_bytes = cache_bytes(caches, memory.get());
  rep.kinds = kinds_of(caches);
  const std::vector<ExitPointInfo> points = exit_points(engine.model().net);
  std::vector<int> cache_of_exit(points.size(), -1);
  for (size_t e = 0; e < caches.exits.size(); ++e) {
    const ExitCache& c = caches.exits[e];
    rep.exits.push_back({c.name, c.enabled(), c.threshold, 0, 0});
    cache_of_exit.at(size_t(c.exit)) = int(e);
  }
  if (memory) {
    rep.has_memory = true;
    rep.memory = {caches.memory->name + ":memory", true, caches.memory->threshold, 0, 0};
  }
  rep.feedback = o.online.feedback;
  rep.guard = o.online.guard;
  // The caches as learned (online updates change them) and as served (with
  // the prior's correction when that is on): OnlineState, shared with
  // OnlineCaches.  The heads the guard leaves on are republished when
  // either changes.
  OnlineState state(caches.exits, caches.label_prior, caches.target_agreement, o.online);
  const std::vector<ExitCache>& live = state.live();
  auto publish = [&] { heads = engine.make_exit_heads(state.head_specs()); };
  if (o.online.prior) publish();  // checks the prior against the heads before the first request
  const std::vector<PoolSpec> pools = state.pools(int(points.size()));
  const size_t per = test.image_floats();
  const size_t total = trace.requests.size();
  std::vector<float> x;
  std::vector<SampleResult> with(size_t(o.batch)), without(size_t(o.batch));
  RunOptions cached;
  cached.heads = heads.get();
  cached.memory = memory.get();
  std::unique_ptr<HeadLearner> learner;
  if (o.online.in_backend) {
    LearnerOptions lo;
    lo.batch = o.online.sgd_options.batch;
    lo.hyper = {o.online.sgd_options.lr, o.online.sgd_options.momentum, o.online.sgd_options.weight_decay};
    learner = session.make_learner(caches.head_specs(), lo);
    cached.heads = nullptr;
    cached.learner = learner.get();
  }
  const bool host_sgd = o.online.sgd && !learner;
  using clock = std::chrono::steady_clock;
  // The nb requests from position s, rendered and normalised into x.
  auto load_batch = [&](size_t s, int nb) {
    x.resize(size_t(nb) * per);
    for (int i = 0; i < nb; ++i) render(test, trace.requests[s + size_t(i)], x.data() + size_t(i) * per);
    engine.normalize(x.data(), nb);
  };
  if (o.warmup < 0) fail("replay: warmup ", o.warmup, " is negative");
  if (o.warmup > 0 && total > 0) {
    const int nb = int(std::min(size_t(o.batch), total));
    load_batch(0, nb);
    RunOptions plain;
    plain.heads = heads.get();
    const auto w0 = clock::now();
    for (int k = 0; k < o.warmup; ++k) {
      session.run(x.data(), nb, a.in_channels, a.input_h, a.input_w, with.data(), nullptr, plain);
      session.run(x.data(), nb, a.in_channels, a.input_h, a.input_w, without.data(), nullptr);
    }
    rep.warmup_runs = o.warmup;
    rep.seconds_warmup = std::chrono::duration<double>(clock::now() - w0).count();
  }
  for (size_t s = 0; s < total; s += size_t(o.batch)) {
    const int nb = int(std::min(size_t(o.batch), total - s));
    load_batch(s, nb);
    const auto t0 = clock::now();
    session.run(x.data(), nb, a.in_channels, a.input_h, a.input_w, with.data(), nullptr, cached);
    const auto t1 = clock::now();
    session.run(x.data(), nb, a.in_channels, a.input_h, a.input_w, without.data(), nullptr);
    const auto t2 = clock::now();
    const double us_c = std::chrono::duration<double, std::micro>(t1 - t0).count();
    const double us_f = std::chrono::duration<double, std::micro>(t2 - t1).count();
    rep.seconds_caches += us_c * 1e-6;
    rep.seconds_full += us_f * 1e-6;
    bool switched = false, prior_due = false;
    for (int i = 0; i < nb; ++i) {
      const Request& req = trace.requests[s + size_t(i)];
      RequestRecord r;
      r.id = int64_t(s) + i;
      r.index = req.index;
      r.exit = with[size_t(i)].exit;
      r.exit_name = r.exit == kFullModel ? "full" : points.at(size_t(r.exit)).name;
      if (with[size_t(i)].from_memory) r.exit_name += ":memory";
      r.label = with[size_t(i)].label;
      r.confidence = with[size_t(i)].confidence;
      r.full_label = without[size_t(i)].label;
      r.truth = test.labels[size_t(req.index)];
      r.macs = macs.cost(r.exit, with[size_t(i)].from_memory);
      r.latency_us = us_c;
      r.full_latency_us = us_f;
      // Feedback picks hash the request's position, so they do not depend on the batch.
      if (r.exit >= 0 && !with[size_t(i)].from_memory && o.online.feedback > 0 &&
          feedback_picked(uint64_t(r.id), o.online.feedback, o.online.feedback_seed)) {
        // Kept running: the full model answers, at its cost; the exit's answer is checked.
        ExitStats& st = rep.exits[size_t(cache_of_exit[size_t(r.exit)])];
        st.feedback++;
        st.feedback_agree += r.label == r.full_label;
        switched |= state.check(r.exit, r.label == r.full_label);
        r.feedback_exit = r.exit;
        r.exit = kFullModel;
        r.exit_name = "full";
        r.label = r.full_label;
        r.confidence = without[size_t(i)].confidence;
        r.macs = macs.cost(kFullModel, false);
        r.latency_us = us_f;
      }
      if (r.exit >= 0) {
        ExitStats& st = with[size_t(i)].from_memory ? rep.memory : rep.exits[size_t(cache_of_exit[size_t(r.exit)])];
        st.hits++;
        st.hit_agree += r.label == r.full_label;
      }
      prior_due |= state.observe_answer(r.label);
      rep.requests.push_back(std::move(r));
    }
    // Exits the guard switched off are scored in shadow on the requests the
    // full model answered (untimed: pooling there is what serving would add).
    // Online updates learn from the same requests: every open learned cache
    // takes an SGD step per online.sgd_options.batch of them, toward the full
    // model's label.
    bool updated = false;
    if (state.any_off() || host_sgd) {
      const auto u0 = clock::now();
      const CollectedFeatures f = collect_features(session, x.data(), nb, nb, pools);
      for (int i = 0; i < nb; ++i) {
        const RequestRecord& r = rep.requests[s + size_t(i)];
        if (r.exit != kFullModel) continue;
        updated |= state.learn(f, i, r.full_label);
        switched |= state.score_off_exits(f, i, r.full_label);
      }
      rep.seconds_updates += std::chrono::duration<double>(clock::now() - u0).count();
    }
    // The prior correction moves with every answer; it is republished every
    // prior_every requests (and whenever the heads change anyway).
    if (switched || updated || prior_due) {
      const auto u0 = clock::now();
      publish();
      cached.heads = heads.get();
      if (o.online.prior) ++rep.prior_updates;
      rep.seconds_updates += std::chrono::duration<double>(clock::now() - u0).count();
    }
    if (o.progress) o.progress(s + size_t(nb), total);
  }
  rep.guard_events = state.guard_events();
  rep.online_steps = state.steps();
  if (o.online.sgd) rep.caches_after = live;
  if (learner) {  // the learned weights of the open caches, as the backend holds them
    rep.online_in_backend = true;
    rep.online_steps = learner->stats().steps;
    for (const ExitHeadSpec& h : learner->specs())
      for (ExitCache& c : rep.caches_after)
        if (c.exit == h.exit && c.kind == HeadKind::kLinear) {
          c.weight = h.weight;
          c.bias = h.bias;
        }
  }
  if (o.online.prior) rep.prior_estimate = state.prior_estimate();
  return rep;
}

std::string replay_json(const ReplayReport& r) {
  nlohmann::json exits = nlohmann::json::array();
  const double n = double(r.requests.size());
  for (const ExitStats& e : r.exits)
    exits.push_back({{"name", e.name},
                     {"enabled", e.enabled},
                     {"threshold", e.threshold},
                     {"hit_rate", e.hit_rate(r.requests.size())},
                     {"hit_agreement", e.hit_agreement()}});
  auto lat = [&](bool c) {
    return nlohmann::json{{"mean", r.latency_mean_us(c) / 1e3},
                          {"p50", r.latency_percentile_us(c, 50) / 1e3},
                          {"p99", r.latency_percentile_us(c, 99) / 1e3}};
  };
  nlohmann::json j = {{"trace", r.trace_kind},
                      {"seed", r.seed},
                      {"requests", r.requests.size()},
                      {"batch", r.batch},
                      {"model_arch", r.model_arch},
                      {"data", r.data_name},
                      {"exits", exits},
                      {"hit_rate", r.hit_rate()},
                      {"agreement", r.agreement()},
                      {"hit_agreement", r.hit_agreement()},
                      {"accuracy_full", r.accuracy_full()},
                      {"accuracy_caches", r.accuracy_caches()},
                      {"latency_ms", {{"caches", lat(true)}, {"full", lat(false)}}},
                      {"throughput_per_s",
                       {{"caches", r.seconds_caches > 0 ? n / r.seconds_caches : 0.0},
                        {"full", r.seconds_full > 0 ? n / r.seconds_full : 0.0}}},
                      {"speedup_mean", r.speedup_mean()},
                      {"warmup", {{"runs", r.warmup_runs}, {"seconds", r.seconds_warmup}}},
                      {"kinds", r.kinds},
                      {"macs_per_request", {{"caches", r.macs_mean()}, {"full", r.macs_full}}},
                      {"speedup_compute", r.speedup_compute()},
                      {"cache_bytes", r.cache_bytes}};
  if (r.feedback > 0) {
    nlohmann::json fb = nlohmann::json::array();
    for (const ExitStats& e : r.exits)
      fb.push_back({{"name", e.name},
                    {"checked", e.feedback},
                    {"agreement", e.feedback ? double(e.feedback_agree) / double(e.feedback) : 1.0}});
    nlohmann::json events = nlohmann::json::array();
    for (const GuardEvent& ev : r.guard_events)
      events.push_back({{"observation", ev.at},
                        {"exit", ev.exit},
                        {"switched", ev.on ? "on" : "off"},
                        {"window_agreement", ev.agreement},
                        {"window", ev.observations}});
    j["feedback"] = {{"share", r.feedback}, {"exits", fb}, {"guard", r.guard}, {"guard_events", events}};
  }
  if (r.online_steps > 0 || r.seconds_updates > 0 || r.online_in_backend) {
    j["online"] = {{"sgd_steps", r.online_steps},
                   {"sgd_where", r.online_in_backend ? "backend" : "host"},
                   {"prior_updates", r.prior_updates},
                   {"prior_estimate", r.prior_estimate},
                   {"update_seconds", r.seconds_updates}};
  }
  if (r.has_memory)
    j["memory"] = {{"name", r.memory.name},
                   {"threshold", r.memory.threshold},
                   {"hit_rate", r.memory.hit_rate(r.requests.size())},
                   {"hit_agreement", r.memory.hit_agreement()}};
  return j.dump(2) + "\n";
}

std::string replay_per_request_jsonl(const ReplayReport& r) {
  std::string out;
  for (const RequestRecord& q : r.requests) {
    const nlohmann::json j = {{"id", q.id},
                              {"index", q.index},
                              {"exit", q.exit},
                              {"exit_name", q.exit_name},
                              {"label", q.label},
                              {"confidence", q.confidence},
                              {"full_label", q.full_label},
                              {"truth", q.truth},
                              {"latency_us", q.latency_us},
                              {"full_latency_us", q.full_latency_us},
                              {"macs", q.macs},
                              {"feedback_exit", q.feedback_exit}};
    out += j.dump() + "\n";
  }
  return out;
}

}  // namespace gati
