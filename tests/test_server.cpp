// The batching server under many client threads: every request answered
// once, with the same exit, label and confidence as a session gives it alone;
// batches actually form; callbacks that submit again cannot deadlock even
// with one worker; bad images are refused on the caller's thread; new exit
// heads take effect; shutdown serves what was queued.
#include <atomic>
#include <cstdint>
#include <set>
#include <thread>

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

}  // namespace
}  // namespace gati
