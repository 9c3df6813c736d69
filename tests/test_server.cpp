// The batching server under many client threads: every request answered
// once, with the same exit, label and confidence as a session gives it alone;
// batches actually form; callbacks that submit again cannot deadlock even
// with one worker; bad images are refused on the caller's thread; new exit
// heads take effect; shutdown serves what was queued; caches that learn
// beside the server publish to it.
#include <atomic>
#include <cstdint>
#include <set>
#include <thread>

#include "cache/online.h"
#include "engine/server.h"
#include "random_model.h"
#include "test_util.h"

namespace gati {
namespace {

using test::random_floats;

struct World {
  Engine engine{test::random_model(test::kSmallArch, 5)};
  size_t per = size_t(engine.arch().in_channels) * size_t(engine.arch().input_h) * size_t(engine.arch().input_w);
  std::shared_ptr<const ExitHeads> heads;
  std::vector<std::vector<float>> images;
  std::vector<SampleResult> want;

  World(int n, float threshold) {
    heads = engine.make_exit_heads(test::random_heads(engine.model(), 3, threshold));
    Session s = engine.session();
    RunOptions o;
    o.heads = heads.get();
    for (int i = 0; i < n; ++i) {
      std::vector<float> x = random_floats(per, uint32_t(100 + i));
      for (float& v : x) v = v * (0.3f + float(i % 7) * 0.4f) + float(i % 5) - 2.f;
      SampleResult r;
      s.run(x.data(), 1, engine.arch().in_channels, engine.arch().input_h, engine.arch().input_w, &r, nullptr, o);
      images.push_back(std::move(x));
      want.push_back(r);
    }
  }
};

TEST(Server, ManyClientThreadsGetEveryAnswerOnceAndRight) {
  World world(64, 0.96f);
  ServerOptions so;
  so.workers = 2;
  so.max_batch = 8;
  so.max_wait_us = 2000;
  so.threads_per_worker = 1;
  Server server(world.engine, so, world.heads);
  const int clients = 8, per_client = 40;
  std::atomic<int> wrong{0}, answered{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < clients; ++t)
    threads.emplace_back([&, t] {
      std::vector<std::pair<int, std::future<ServeResult>>> futures;
      for (int k = 0; k < per_client; ++k) {
        const int i = (t * 13 + k * 7) % int(world.images.size());
        futures.emplace_back(i, server.submit(world.images[size_t(i)]));
      }
      for (auto& [i, f] : futures) {
        const ServeResult r = f.get();
        const SampleResult& w = world.want[size_t(i)];
        if (r.result.exit != w.exit || r.result.label != w.label ||
            std::abs(r.result.confidence - w.confidence) > 1e-5f || (r.result.exit == kFullModel) != !r.logits.empty())
          wrong++;
        answered++;
      }
    });
  for (auto& th : threads) th.join();
  EXPECT_EQ(answered.load(), clients * per_client);
  EXPECT_EQ(wrong.load(), 0);
  const ServerStats st = server.stats();
  EXPECT_EQ(st.requests, clients * per_client);
  EXPECT_EQ(st.failed, 0);
  EXPECT_GT(st.mean_batch(), 1.5) << "requests from 8 clients should share batches";
  // The mix is meaningful: some exited early, some ran to the end.
  int early = 0;
  for (const SampleResult& r : world.want) early += r.exit >= 0;
  EXPECT_GT(early, 0);
  EXPECT_LT(early, int(world.want.size()));
}

TEST(Server, CallbacksRunOncePerRequestWithTheRightSample) {
  World world(16, 0.6f);
  ServerOptions so;
  so.workers = 3;
  so.max_batch = 4;
  so.threads_per_worker = 1;
  std::mutex m;
  std::multiset<int> seen;
  int wrong = 0;
  {
    Server server(world.engine, so, world.heads);
    for (int rep = 0; rep < 5; ++rep)
      for (int i = 0; i < 16; ++i)
        server.submit(world.images[size_t(i)], [&, i](const ServeResult* r, std::exception_ptr e) {
          std::lock_guard<std::mutex> lock(m);
          seen.insert(i);
          if (e || !r || r->result.label != world.want[size_t(i)].label || r->result.exit != world.want[size_t(i)].exit)
            ++wrong;
        });
  }  // the destructor serves everything queued
  EXPECT_EQ(seen.size(), 80u);
  for (int i = 0; i < 16; ++i) EXPECT_EQ(seen.count(i), 5u);
  EXPECT_EQ(wrong, 0);
}

TEST(Server, ACallbackThatSubmitsAndWaitsDoesNotDeadlockOneWorker) {
  World world(4, 2.0f);
  ServerOptions so;
  so.workers = 1;
  so.threads_per_worker = 1;
  Server server(world.engine, so, world.heads);
  std::promise<int> done;
  server.submit(world.images[0], [&](const ServeResult*, std::exception_ptr) {
    // Submitting from inside a callback and waiting on the answer.
    const ServeResult r = server.submit(world.images[1]).get();
    done.set_value(r.result.label);
  });
  auto f = done.get_future();
  ASSERT_EQ(f.wait_for(std::chrono::seconds(30)), std::future_status::ready) << "deadlock";
  EXPECT_EQ(f.get(), world.want[1].label);
  EXPECT_EQ(server.stats().inline_requests, 1);
}

TEST(Server, RefusesBadImagesOnTheCallersThreadAndKeepsServing) {
  World world(2, 2.0f);
  Server server(world.engine, {}, world.heads);
  EXPECT_GATI_ERROR(server.submit(std::vector<float>(world.per - 1, 0.5f)), "values, the model takes");
  std::vector<float> nan = world.images[0];
  nan[17] = std::nanf("");
  EXPECT_GATI_ERROR(server.submit(nan), "image value 17 is nan");
  EXPECT_EQ(server.submit(world.images[1]).get().result.label, world.want[1].label);
}

TEST(Server, NewExitHeadsTakeEffect) {
  World world(3, 2.0f);  // never fire
  Server server(world.engine, {}, world.heads);
  EXPECT_EQ(server.submit(world.images[0]).get().result.exit, kFullModel);
  server.set_exit_heads(world.engine.make_exit_heads(test::random_heads(world.engine.model(), 3, 0.0f)));
  EXPECT_EQ(server.submit(world.images[0]).get().result.exit, 0);  // always fire: the first exit
  server.set_exit_heads(nullptr);
  EXPECT_EQ(server.submit(world.images[0]).get().result.exit, kFullModel);
}

TEST(Server, RejectsBadOptions) {
  World world(1, 2.0f);
  ServerOptions so;
  so.workers = 0;
  EXPECT_GATI_ERROR(Server(world.engine, so), "workers = 0");
  so = {};
  so.max_batch = 0;
  EXPECT_GATI_ERROR(Server(world.engine, so), "max_batch = 0");
}

// Caches for World's model built from its random heads, with a uniform
// label prior (what online prior adaptation corrects from).
CacheSet world_caches(const World& world, float threshold) {
  CacheSet set;
  set.model_arch = world.engine.arch().name;
  set.model_fingerprint = fingerprint(world.engine.model());
  for (const ExitHeadSpec& h : test::random_heads(world.engine.model(), 3, threshold))
    set.exits.push_back(ExitCache::from_head_spec(h));
  set.label_prior.assign(size_t(world.engine.arch().num_classes), 1.0f / float(world.engine.arch().num_classes));
  return set;
}

// Two workers of one thread, batches of up to 4: the online learners' servers.
ServerOptions two_small_workers() {
  ServerOptions so;
  so.workers = 2;
  so.max_batch = 4;
  so.threads_per_worker = 1;
  return so;
}

// Serves `world`'s images once each through `server`, every answer handed to
// `online` from the worker's callback; returns how many the full model gave.
int serve_observed(World& world, Server& server, OnlineCaches& online) {
  std::atomic<int> done{0}, full{0};
  for (size_t i = 0; i < world.images.size(); ++i)
    server.submit(world.images[i], [&, i](const ServeResult* r, std::exception_ptr) {
      if (r) {
        full += r->result.exit == kFullModel;
        online.observe(*r, world.images[i].data());
      }
      ++done;
    });
  while (done < int(world.images.size())) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  online.flush();
  return full;
}

// Heads that learn on the workers' devices (ServerOptions::learn): served
// one at a time, the answers are those of a session whose learner saw the
// same requests in the same order; the counts add up; new heads start the
// learning over; heads that cannot be served as halves are refused.
TEST(Server, HeadsLearnWhereTheyRun) {
  World world(48, 0.999f);
  const int c = world.engine.arch().in_channels, h = world.engine.arch().input_h, w = world.engine.arch().input_w;
  LearnerOptions lo;
  lo.batch = 3;
  lo.hyper = {0.05f, 0.9f, 5e-4f};
  Session s = world.engine.session();
  std::unique_ptr<HeadLearner> learner = s.make_learner(world.heads->specs(), lo);
  ServerOptions so;
  so.workers = 1;
  so.threads_per_worker = 1;
  so.learn = true;
  so.learner = lo;
  int64_t full = 0;
  {
    Server server(world.engine, so, world.heads);
    RunOptions o;
    o.learner = learner.get();
    for (int round = 0; round < 2; ++round)
      for (size_t i = 0; i < world.images.size(); ++i) {
        const ServeResult got = server.submit(world.images[i]).get();
        SampleResult want;
        s.run(world.images[i].data(), 1, c, h, w, &want, nullptr, o);
        ASSERT_EQ(got.result.exit, want.exit) << "round " << round << " request " << i;
        ASSERT_EQ(got.result.label, want.label) << "round " << round << " request " << i;
        ASSERT_EQ(got.result.confidence, want.confidence) << "round " << round << " request " << i;
        full += want.exit == kFullModel;
      }
    const ServerStats st = server.stats();
    EXPECT_EQ(st.learning.learned, full);
    const LearnerStats ref = learner->stats();
    EXPECT_EQ(ref.learned, full);
    EXPECT_GT(ref.steps, 10) << full << " full-model answers, " << ref.rejected << " refused: " << ref.last_rejection;
    // The steps the last batch queued are counted after the next one.
    EXPECT_LE(st.learning.steps, ref.steps);
    EXPECT_GE(st.learning.steps, ref.steps - int64_t(world.heads->specs().size()));
    // New heads: learning starts over from them (the heads as first given:
    // a request the full model answered then is answered by it again), and
    // the counts carry on, the old learner's last steps included.
    server.set_exit_heads(world.engine.make_exit_heads(world.heads->specs()));
    size_t k = 0;
    while (k < world.want.size() && world.want[k].exit != kFullModel) ++k;
    ASSERT_LT(k, world.want.size());
    const ServeResult again = server.submit(world.images[k]).get();
    EXPECT_EQ(again.result.exit, kFullModel);
    EXPECT_EQ(again.result.label, world.want[k].label);
    EXPECT_EQ(server.stats().learning.learned, full + 1);
    EXPECT_EQ(server.stats().learning.steps, ref.steps);
    LearnerOptions bad = lo;
    bad.hyper.max_weight = NAN;
    so.learner = bad;
    EXPECT_GATI_ERROR(Server(world.engine, so, world.heads), "max_weight nan > 0");
    so.learner = lo;
    std::vector<ExitHeadSpec> wide = world.heads->specs();
    wide[0].weight[0] = 7e4f;
    EXPECT_GATI_ERROR(server.set_exit_heads(world.engine.make_exit_heads(wide)), "beyond the largest half");
    EXPECT_GATI_ERROR(Server(world.engine, so, world.engine.make_exit_heads(wide)), "beyond the largest half");
  }
}

// Learning beside the server: answers arrive from the workers' callbacks,
// the full model's ones teach the learned heads (one step per SGD batch at
// every open exit), and what is learned reaches the server: after a flush,
// its answers are those of the learned heads.
TEST(Server, OnlineCachesLearnBesideItAndPublishToIt) {
  World world(48, 0.999f);
  // Open (threshold <= 1) but answering only where a head's softmax
  // saturates to 1: most requests reach the full model and teach the heads.
  const CacheSet set = world_caches(world, 1.0f);
  Server server(world.engine, two_small_workers());
  OnlineOptions oo;
  oo.sgd = true;
  oo.sgd_options.batch = 4;
  OnlineCaches online(world.engine, set, server, oo);
  const int full = serve_observed(world, server, online);
  ASSERT_GE(full, 16) << "too few requests reached the full model to learn from";
  const OnlineStats st = online.stats();
  EXPECT_EQ(st.answers, 48);
  EXPECT_EQ(st.learned, full);
  EXPECT_EQ(st.dropped, 0);
  EXPECT_EQ(st.errors, 0) << online.last_error();
  int open = 0;
  for (const ExitCache& c : set.exits) open += c.enabled() && c.kind == HeadKind::kLinear;
  EXPECT_EQ(st.steps, int64_t(full / 4) * open);
  EXPECT_GE(st.publishes, 2);
  const CacheSet learned = online.caches();
  ASSERT_EQ(learned.exits.size(), set.exits.size());
  for (size_t e = 0; e < set.exits.size(); ++e)
    if (set.exits[e].enabled()) {
      EXPECT_NE(learned.exits[e].weight, set.exits[e].weight) << set.exits[e].name;
    }
  // The server now answers as the learned heads do.
  const auto heads = world.engine.make_exit_heads(learned.head_specs());
  Session s = world.engine.session();
  RunOptions ro;
  ro.heads = heads.get();
  for (size_t i = 0; i < world.images.size(); i += 5) {
    SampleResult want;
    s.run(world.images[i].data(), 1, world.engine.arch().in_channels, world.engine.arch().input_h,
          world.engine.arch().input_w, &want, nullptr, ro);
    const ServeResult got = server.submit(world.images[i]).get();
    EXPECT_EQ(got.result.exit, want.exit) << "image " << i;
    EXPECT_EQ(got.result.label, want.label) << "image " << i;
  }
}

// The drift guard beside a server: the first exit answers every request
// with a class of its own choosing (agreeing with the full model about as
// often as chance), feedback checks its answers on the learner's session,
// the guard switches it off, and once that is published the server stops
// answering there; clients were never held back for the check.
TEST(Server, OnlineGuardSwitchesOffAnExitThatDisagrees) {
  World world(60, 0.999f);
  CacheSet set = world_caches(world, 1.0f);  // open, rarely confident: most answers come from the full model
  ExitCache& bad = set.exits.front();
  std::fill(bad.weight.begin(), bad.weight.end(), 0.f);
  std::fill(bad.bias.begin(), bad.bias.end(), 0.f);
  int wrong = 0;  // the class the full model gives least often
  {
    std::vector<int> count(size_t(world.engine.arch().num_classes), 0);
    for (const SampleResult& w : world.want) ++count.at(size_t(w.label));
    wrong = int(std::min_element(count.begin(), count.end()) - count.begin());
  }
  bad.bias[size_t(wrong)] = 20.f;  // softmax ~1 for `wrong`, whatever the input
  bad.threshold = 0.5f;
  Server server(world.engine, two_small_workers());
  OnlineOptions oo;
  oo.guard = true;
  oo.feedback = 1.0;
  oo.guard_options.window = 20;
  oo.guard_options.min_observations = 10;
  OnlineCaches online(world.engine, set, server, oo);
  serve_observed(world, server, online);
  const OnlineStats st = online.stats();
  EXPECT_EQ(st.errors, 0) << online.last_error();
  EXPECT_GE(st.checked, 10);
  EXPECT_LT(st.check_agreed, st.checked / 2);
  const std::vector<GuardEvent> events = online.guard_events();
  ASSERT_FALSE(events.empty());
  EXPECT_EQ(events.front().exit, bad.exit);
  EXPECT_FALSE(events.front().on);
  EXPECT_EQ(st.switches, int64_t(events.size()));
  for (const GuardEvent& ev : events) EXPECT_FALSE(ev.on) << "its shadow never agrees";
  for (size_t i = 0; i < world.images.size(); i += 3)
    EXPECT_NE(server.submit(world.images[i]).get().result.exit, bad.exit) << "image " << i;
  online.close();
  // No feedback, no guard.
  oo.feedback = 0;
  EXPECT_GATI_ERROR(OnlineCaches(world.engine, set, server, oo), "the drift guard needs feedback");
  oo.feedback = 1.5;
  EXPECT_GATI_ERROR(OnlineCaches(world.engine, set, server, oo), "feedback 1.5 must be in [0, 1]");
}

// The prior follows the answers and is republished every prior_every of
// them; a full queue drops images (counted), not answers; bad pairings and
// settings are refused before anything is served.
TEST(Server, OnlineCachesBoundTheirQueueAndRefuseBadSetups) {
  World world(40, 0.999f);
  const CacheSet set = world_caches(world, 0.999f);
  ServerOptions so;
  so.threads_per_worker = 1;
  Server server(world.engine, so);
  OnlineOptions oo;
  oo.sgd = true;
  oo.prior = true;
  oo.prior_every = 5;
  {
    OnlineCaches online(world.engine, set, server, oo, 0);  // room for no image
    const int full = serve_observed(world, server, online);
    const OnlineStats st = online.stats();
    EXPECT_EQ(st.answers, 40);
    EXPECT_EQ(st.dropped, full);
    EXPECT_EQ(st.learned, 0);
    EXPECT_EQ(st.steps, 0);
    EXPECT_GE(st.publishes, 2);  // the first, and the prior's
    EXPECT_EQ(st.errors, 0) << online.last_error();
  }
  {
    // A step the SGD guard rejects is counted with its reason; serving and
    // the prior go on, and close() publishes a last time.
    OnlineOptions wild = oo;
    wild.sgd_options.batch = 2;
    wild.sgd_options.lr = 1e30f;
    OnlineCaches online(world.engine, set, server, wild);
    serve_observed(world, server, online);
    const int64_t published = online.stats().publishes;
    EXPECT_GE(online.stats().errors, 1);
    EXPECT_EQ(online.stats().steps, 0);
    EXPECT_NE(online.last_error().find("SGD step rejected"), std::string::npos) << online.last_error();
    online.close();
    EXPECT_EQ(online.stats().publishes, published + 1);
    ServeResult r;
    online.observe(r, nullptr);  // after close(): counted, ignored
    EXPECT_EQ(online.stats().late, 1);
    EXPECT_EQ(online.stats().answers, 40);
  }
  CacheSet no_prior = set;
  no_prior.label_prior.clear();
  EXPECT_GATI_ERROR(OnlineCaches(world.engine, no_prior, server, oo), "carry no label prior");
  CacheSet other = set;
  other.model_fingerprint = "0123";
  EXPECT_GATI_ERROR(OnlineCaches(world.engine, other, server, oo), "built for other weights");
  OnlineOptions bad = oo;
  bad.prior_every = 0;
  EXPECT_GATI_ERROR(OnlineCaches(world.engine, set, server, bad), "prior_every must be at least 1");
  bad = oo;
  bad.sgd_options.distill_alpha = 0.5f;
  EXPECT_GATI_ERROR(OnlineCaches(world.engine, set, server, bad), "distillation (distill_alpha 0.5) is for offline");
}

}  // namespace
}  // namespace gati
