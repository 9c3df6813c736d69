// How many threads the CPU kernels use, per calling thread.
//
// Design decision: no kernel ever changes process-wide OpenMP state
// (omp_set_num_threads would leak into the caller's other work and into other
// engine workers).  A backend context opens a ThreadScope around its ops; every
// parallel region in kernels/cpu asks thread_count(), which reads the scope of
// the thread that called it, so two workers with 2 and 6 threads do not see
// each other's setting.
#pragma once

namespace gati::cpu {

// Threads for parallel regions started on this thread: the innermost open
// ThreadScope's count, or every core when none is open.
int thread_count();

// This thread's index in the innermost parallel region (0 outside one).
int thread_index();

// body(i) for i in [0, n): split statically over thread_count() threads when
// `parallel`, else inline on this thread.  Small work must stay out of a
// parallel region: entering one costs about 2 us even with an OpenMP if()
// clause that makes it serial (measured: a demo exit head went from 6.6 us
// to 1.4 us), which at batch 1 is a large share of a small layer.
template <class F>
void parallel_for(int n, bool parallel, F&& body) {
  if (!parallel) {
    for (int i = 0; i < n; ++i) body(i);
    return;
  }
#pragma omp parallel for schedule(static) num_threads(thread_count())
  for (int i = 0; i < n; ++i) body(i);
}

class ThreadScope {
 public:
  explicit ThreadScope(int threads);  // threads <= 0: every core
  ~ThreadScope();
  ThreadScope(const ThreadScope&) = delete;
  ThreadScope& operator=(const ThreadScope&) = delete;

 private:
  int saved_;
};

}  // namespace gati::cpu
