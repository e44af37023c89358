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
      auto it = free_.find(cls);
      if (it != free_.end() && !it->second.empty()) {
        void* p = it->second.back();
        it->second.pop_back();
        stats_.bytes_cached -= cls;
        ++stats_.reuses;
        note_in_use(p, cls);
        return p;
      }
      // A miss: new memory is coming from the OS anyway, so give back cached blocks of other
      // sizes worth as much first. Without this, 300 freed 1 MiB blocks stay cached beside a
      // new 300 MiB array; with it the footprint tracks what is in use. A steady-state training
      // step never misses, so it never evicts.
      evict_locked(cls, evicted);
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
        free_[cls].push_back(p);
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
        release.insert(release.end(), kv.second.begin(), kv.second.end());
        kv.second.clear();
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

  void evict_locked(std::size_t want, std::vector<void*>& out) {
    std::size_t freed = 0;
    for (auto& kv : free_) {
      while (!kv.second.empty() && freed < want) {
        out.push_back(kv.second.back());
        kv.second.pop_back();
        freed += kv.first;
      }
      if (freed >= want) break;
    }
    stats_.bytes_cached -= freed;
    stats_.releases += out.size();
  }

  void note_in_use(void* p, std::size_t cls) {
    live_.emplace(p, cls);
    stats_.bytes_in_use += cls;
    if (stats_.bytes_in_use > stats_.peak_bytes_in_use) stats_.peak_bytes_in_use = stats_.bytes_in_use;
  }

  std::mutex mu_;
  std::unordered_map<void*, std::size_t> live_;
  std::unordered_map<std::size_t, std::vector<void*>> free_;
  PoolStats stats_{0, 0, 0, std::size_t(1) << 30, 0, 0, 0, 0};
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
