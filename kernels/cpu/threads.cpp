// Per-thread kernel thread counts; see threads.h.
#include "kernels/cpu/threads.h"

#include <thread>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace gati::cpu {
namespace {

int all_cores() {
#ifdef _OPENMP
  static const int n = omp_get_num_procs();
#else
  static const int n = int(std::thread::hardware_concurrency());
#endif
  return n > 0 ? n : 1;
}

thread_local int scoped_threads = 0;

}  // namespace

int thread_index() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

int thread_count() { return scoped_threads > 0 ? scoped_threads : all_cores(); }

ThreadScope::ThreadScope(int threads) : saved_(scoped_threads) { scoped_threads = threads > 0 ? threads : 0; }
ThreadScope::~ThreadScope() { scoped_threads = saved_; }

}  // namespace gati::cpu
