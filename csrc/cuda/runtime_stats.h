// Counters of the caching allocator (csrc/cuda/runtime.cu), read by gf.cuda.memory_stats().
// Kept out of runtime.h (the fixed kernel contract): only the bindings and tests need them.
#pragma once

#include <cstddef>
#include <cstdint>

namespace gf::cuda {

struct AllocStats {
  std::uint64_t alloc_calls = 0;     // alloc() requests
  std::uint64_t malloc_calls = 0;    // of which went to cudaMalloc (the rest hit the cache)
  std::uint64_t cache_hits = 0;
  std::size_t allocated_bytes = 0;   // in live blocks (size-class rounded)
  std::size_t reserved_bytes = 0;    // held from the driver: live + cached
  std::size_t peak_allocated_bytes = 0;
};

AllocStats alloc_stats();
// Zeroes the call counters (not the byte counts): a test takes a step, resets, takes another
// and expects malloc_calls == 0.
void reset_alloc_counters();
// Waits for the stream, then gives every cached (free) block back to the driver.
void empty_cache();

}  // namespace gf::cuda
