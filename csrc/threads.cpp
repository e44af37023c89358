#include <pthread.h>

#include <atomic>
#include <cstdlib>

#include "common.h"

namespace gradfuse {
namespace {

int initial_threads() {
#ifdef GRADFUSE_OPENMP
  return omp_get_max_threads();  // OMP_NUM_THREADS, else the number of cores
#else
  return 1;
#endif
}

std::atomic<int> g_threads{initial_threads()};

int64_t initial_grain() {
  const char* v = std::getenv("GRADFUSE_PARALLEL_GRAIN");
  if (v == nullptr || *v == '\0') return kDefaultParallelGrain;
  char* end = nullptr;
  const long long g = std::strtoll(v, &end, 10);
  return (end != nullptr && *end == '\0' && g >= 1) ? int64_t(g) : kDefaultParallelGrain;
}

const int64_t g_grain = initial_grain();

// libgomp's thread pool does not survive fork(): a child that enters a parallel region the
// parent had used waits forever for threads that were not copied. Children (multiprocessing
// workers, data loaders) therefore run the kernels on one thread, as PyTorch's do.
void single_thread_in_child() { g_threads.store(1); }
const int g_atfork = pthread_atfork(nullptr, nullptr, single_thread_in_child);

}  // namespace

int64_t parallel_grain() { return g_grain; }

int num_threads() { return g_threads.load(std::memory_order_relaxed); }

void set_num_threads(int n) { g_threads.store(n < 1 ? 1 : n); }

}  // namespace gradfuse
