// gradfuse's CUDA runtime (csrc/cuda/runtime.h): the one stream, error checks, the caching
// allocator and the launch-size helper that every csrc/cuda/*.cu builds on.
#include "cuda/runtime.h"

#include <cstdint>
#include <mutex>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

#include "cuda/runtime_stats.h"

namespace gf::cuda {

namespace {

// The stream is created on first use and never destroyed: kernels may still be queued on it
// while Python tears modules down at exit, and the driver reclaims it with the context.
cudaStream_t make_stream() {
  cudaStream_t s = nullptr;
  check(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreate");
  return s;
}

// Blocks are binned by size class: multiples of 512 bytes up to 1 MiB, multiples of 2 MiB
// above. A training step asks for the same sizes every step, so after the first step every
// request finds a freed block of its class and cudaMalloc (which synchronizes the device) is
// never called again. Memory is handed back in stream order: a block freed while a kernel
// that uses it is still queued is only handed to work queued after that kernel on the same
// stream, so no event is needed.
constexpr std::size_t kSmallQuantum = 512;
constexpr std::size_t kSmallLimit = std::size_t(1) << 20;
constexpr std::size_t kLargeQuantum = std::size_t(2) << 20;

std::size_t size_class(std::size_t bytes) {
  if (bytes == 0) bytes = 1;
  const std::size_t q = bytes <= kSmallLimit ? kSmallQuantum : kLargeQuantum;
  return (bytes + q - 1) / q * q;
}

struct Pool {
  std::mutex mu;
  std::unordered_map<std::size_t, std::vector<void*>> free_blocks;  // class -> cached blocks
  std::unordered_map<void*, std::size_t> live;                       // block -> class
  AllocStats stats;
};

Pool& pool() {
  // leaked on purpose: DeviceArrays freed during interpreter shutdown still return here
  static Pool* p = new Pool();
  return *p;
}

void release_cached(Pool& p) {
  for (auto& kv : p.free_blocks) {
    for (void* b : kv.second) {
      cudaFree(b);
      p.stats.reserved_bytes -= kv.first;
    }
    kv.second.clear();
  }
  p.free_blocks.clear();
}

}  // namespace

cudaStream_t stream() {
  static cudaStream_t s = make_stream();
  return s;
}

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    // clear a sticky launch error so the next call reports its own state
    cudaGetLastError();
    throw std::runtime_error(std::string("CUDA error in ") + what + ": " +
                             cudaGetErrorString(e));
  }
}

void* alloc(std::size_t bytes) {
  const std::size_t cls = size_class(bytes);
  Pool& p = pool();
  std::lock_guard<std::mutex> lock(p.mu);
  p.stats.alloc_calls += 1;
  auto it = p.free_blocks.find(cls);
  void* ptr = nullptr;
  if (it != p.free_blocks.end() && !it->second.empty()) {
    ptr = it->second.back();
    it->second.pop_back();
    p.stats.cache_hits += 1;
  } else {
    cudaError_t e = cudaMalloc(&ptr, cls);
    if (e == cudaErrorMemoryAllocation) {
      // out of memory with blocks of other classes cached: give those back and retry once
      cudaGetLastError();
      check(cudaStreamSynchronize(stream()), "cudaStreamSynchronize (allocator)");
      release_cached(p);
      e = cudaMalloc(&ptr, cls);
    }
    check(e, "cudaMalloc");
    p.stats.malloc_calls += 1;
    p.stats.reserved_bytes += cls;
  }
  p.live.emplace(ptr, cls);
  p.stats.allocated_bytes += cls;
  if (p.stats.allocated_bytes > p.stats.peak_allocated_bytes)
    p.stats.peak_allocated_bytes = p.stats.allocated_bytes;
  return ptr;
}

void free(void* ptr) {
  if (ptr == nullptr) return;
  Pool& p = pool();
  std::lock_guard<std::mutex> lock(p.mu);
  auto it = p.live.find(ptr);
  if (it == p.live.end()) return;  // not ours: ignoring beats a double free on the device
  const std::size_t cls = it->second;
  p.live.erase(it);
  p.stats.allocated_bytes -= cls;
  p.free_blocks[cls].push_back(ptr);
}

unsigned grid_for(std::size_t n, unsigned threads) {
  static int max_blocks = [] {
    int dev = 0, sms = 0, per_sm = 0;
    if (cudaGetDevice(&dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&per_sm, cudaDevAttrMaxThreadsPerMultiProcessor, dev) !=
            cudaSuccess) {
      cudaGetLastError();
      return 65535;
    }
    return sms * (per_sm / 256);  // enough blocks of 256 to fill every SM, no more
  }();
  std::size_t blocks = (n + threads - 1) / threads;
  if (blocks < 1) blocks = 1;
  const std::size_t cap = static_cast<std::size_t>(max_blocks) * 256 / threads;
  if (blocks > cap) blocks = cap > 0 ? cap : 1;
  return static_cast<unsigned>(blocks);
}

AllocStats alloc_stats() {
  Pool& p = pool();
  std::lock_guard<std::mutex> lock(p.mu);
  return p.stats;
}

void reset_alloc_counters() {
  Pool& p = pool();
  std::lock_guard<std::mutex> lock(p.mu);
  p.stats.alloc_calls = 0;
  p.stats.malloc_calls = 0;
  p.stats.cache_hits = 0;
  p.stats.peak_allocated_bytes = p.stats.allocated_bytes;
}

void empty_cache() {
  check(cudaStreamSynchronize(stream()), "cudaStreamSynchronize (empty_cache)");
  Pool& p = pool();
  std::lock_guard<std::mutex> lock(p.mu);
  release_cached(p);
}

}  // namespace gf::cuda
