#include "memory/pool.h"

#include <sys/mman.h>

#include <cstdlib>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace gradfuse::memory {
namespace {

class Pool {
 public:
  void* alloc(std::size_t bytes) {
    const std::size_t cls = pool_size_class(bytes);
    std::vector<void*> evicted;
    {
      std::lock_guard<std::mutex> lock(mu_);
      ++stats_.allocs;
      SizeClass& sc = free_[cls];
      sc.last_request = stats_.allocs;
      if (!sc.blocks.empty()) {
        void* p = sc.blocks.back();
        sc.blocks.pop_back();
        stats_.bytes_cached -= cls;
        ++stats_.reuses;
        note_in_use(p, cls);
        return p;
      }
      // A miss: new memory comes from the OS anyway, so first give back the cached blocks of
      // sizes nobody has asked for in the last kIdleRequests requests (left over from an
      // earlier phase of the program). Sizes in use by a training loop are asked for every
      // step, so its cache is never touched; evicting any cached size instead made one miss
      // evict blocks the same step needed next, and misses cascaded.
      evict_idle_locked(evicted);
    }
    for (void* q : evicted) std::free(q);
    void* p = os_alloc(cls);
    if (p == nullptr) {
      empty_cache();
      p = os_alloc(cls);
      if (p == nullptr) return nullptr;
    }
    std::lock_guard<std::mutex> lock(mu_);
    ++stats_.fresh;
    note_in_use(p, cls);
    return p;
  }

  void free(void* p) {
    std::size_t cls = 0;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = live_.find(p);
      if (it == live_.end()) return;  // not ours: the caller checked pool_owns first
      cls = it->second;
      live_.erase(it);
      stats_.bytes_in_use -= cls;
      if (stats_.bytes_cached + cls <= stats_.cache_limit) {
        free_[cls].blocks.push_back(p);
        stats_.bytes_cached += cls;
        return;
      }
      ++stats_.releases;
    }
    std::free(p);
  }

  bool owns(const void* p, std::size_t* block_bytes) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = live_.find(const_cast<void*>(p));
    if (it == live_.end()) return false;
    if (block_bytes) *block_bytes = it->second;
    return true;
  }

  PoolStats stats() {
    std::lock_guard<std::mutex> lock(mu_);
    return stats_;
  }

  void empty_cache() {
    std::vector<void*> release;
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (auto& kv : free_) {
        release.insert(release.end(), kv.second.blocks.begin(), kv.second.blocks.end());
        kv.second.blocks.clear();
      }
      stats_.bytes_cached = 0;
      stats_.releases += release.size();
    }
    for (void* p : release) std::free(p);
  }

  void set_cache_limit(std::size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stats_.cache_limit = bytes;
      if (stats_.bytes_cached <= bytes) return;
    }
    empty_cache();
  }

 private:
  static void* os_alloc(std::size_t cls) {
    const std::size_t align = cls >= kHugePage ? kHugePage : 4096;
    void* p = std::aligned_alloc(align, cls);  // cls is a multiple of 4 KiB, so of align too
    // A hint: where THP is "never" or unsupported, the block is simply made of 4 KiB pages.
    if (p != nullptr && cls >= kHugePage) madvise(p, cls, MADV_HUGEPAGE);
    return p;
  }

  void evict_idle_locked(std::vector<void*>& out) {
    for (auto& kv : free_) {
      SizeClass& sc = kv.second;
      if (sc.blocks.empty() || sc.last_request + kIdleRequests > stats_.allocs) continue;
      stats_.bytes_cached -= kv.first * sc.blocks.size();
      stats_.releases += sc.blocks.size();
      out.insert(out.end(), sc.blocks.begin(), sc.blocks.end());
      sc.blocks.clear();
    }
  }

  void note_in_use(void* p, std::size_t cls) {
    live_.emplace(p, cls);
    stats_.bytes_in_use += cls;
    if (stats_.bytes_in_use > stats_.peak_bytes_in_use) stats_.peak_bytes_in_use = stats_.bytes_in_use;
  }

  std::mutex mu_;
  std::unordered_map<void*, std::size_t> live_;
  struct SizeClass {
    std::vector<void*> blocks;       // cached, ready for reuse
    std::uint64_t last_request = 0;  // value of stats_.allocs when this size was last asked for
  };
  static constexpr std::uint64_t kIdleRequests = 4096;
  std::unordered_map<std::size_t, SizeClass> free_;
  PoolStats stats_;
};

// Never destroyed: numpy arrays may still be freed into it while the interpreter shuts down.
Pool& pool() {
  static Pool* p = new Pool();
  return *p;
}

}  // namespace

std::size_t pool_size_class(std::size_t bytes) {
  if (bytes < 4096) return 4096;
  std::size_t top = std::size_t(1) << (63 - __builtin_clzll(bytes));
  std::size_t step = top / 8 < 4096 ? 4096 : top / 8;
  return (bytes + step - 1) / step * step;
}

void* pool_alloc(std::size_t bytes) { return pool().alloc(bytes); }
void pool_free(void* p) { pool().free(p); }
bool pool_owns(const void* p, std::size_t* block_bytes) { return pool().owns(p, block_bytes); }
PoolStats pool_stats() { return pool().stats(); }
void pool_empty_cache() { pool().empty_cache(); }
void pool_set_cache_limit(std::size_t bytes) { pool().set_cache_limit(bytes); }

}  // namespace gradfuse::memory
