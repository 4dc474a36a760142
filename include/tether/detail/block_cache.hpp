// SPDX-License-Identifier: BSL-1.0
// Freed task records kept by size for the next submissions, so that making and freeing them skips malloc's locks.
#pragma once

#include <tether/config.hpp>
#include <tether/detail/spin_lock.hpp>

#include <array>
#include <cstddef>
#include <mutex>
#include <new>
#include <utility>

#include <pthread.h>

namespace tether::inline v1::detail {

/// A record is allocated by the submitting thread and freed by a worker. glibc sends such a free back to the
/// allocating thread's arena, under that arena's lock, which the submitter holds for its next malloc: in the
/// throughput benchmark about every second task paid a futex system call there. Freed blocks wait here instead, per
/// size class of 64 bytes, for the next record of their class.
///
/// Each thread keeps its own list per class, and hands blocks to other threads 32 at a time, through one shared shelf
/// per class: a submitter and a worker would otherwise take the same lock for every task, and its cache line would
/// cross between their cores twice a task. With its list and the shelf empty, a thread takes 31 blocks from operator
/// new at once. A thread keeps fewer than 32 blocks per class (given back when it ends), a shelf at most 256 KiB;
/// beyond that, and for blocks over 1 KiB, memory goes back to operator delete. One process-wide cache, never
/// destroyed, so a record may outlive its manager. With TETHER_RECYCLE_MEMORY 0 (the default under AddressSanitizer)
/// nothing is kept, but sizes are rounded the same way, so code built either way may free what the other allocated.
/// Only for types of the default new alignment: over-aligned ones go to the aligned operator new.
/// **Thread safety:** every function from any thread.
class block_cache {
public:
  static void* allocate(std::size_t size) {
    if (size > largest) return ::operator new(size);
    if (!TETHER_RECYCLE_MEMORY || ended_) return ::operator new(rounded(size));
    const std::size_t c = class_of(size);
    hand& h = hands_.of[c];
    if (!h.head) h = take_batch(c);
    if (!h.head) h = fresh_batch(c);
    if (free_block* b = h.head) {
      h.head = b->next;
      --h.count;
      return b;
    }
    return ::operator new(rounded(size));
  }

  static void deallocate(void* p, std::size_t size) noexcept {
    if (size > largest) return ::operator delete(p, size);
    if (!TETHER_RECYCLE_MEMORY || ended_) return ::operator delete(p, rounded(size));
    hand& h = hands_.of[class_of(size)];
    h.head = ::new (p) free_block{h.head};
    if (++h.count == batch) give_batch(class_of(size), std::exchange(h, hand{}));
  }

private:
  static constexpr std::size_t granule = 64, largest = 1024, kept_bytes = 256 * 1024, batch = 32;
  static constexpr std::size_t classes = largest / granule;

  /// A free block; the first block of a batch on a shelf also links the next batch and counts its own.
  struct free_block {
    free_block* next;
    free_block* next_batch = nullptr;
    std::size_t count = 0;
  };
  /// A chain of free blocks of one class.
  struct hand {
    free_block* head = nullptr;
    std::size_t count = 0;
  };
  struct alignas(64) shelf {
    spin_lock lock;
    free_block* batches = nullptr;  // guarded by lock
    std::size_t kept = 0;           // blocks in `batches`, guarded by lock
  };
  /// One thread's chains, one per class; given to the shelves when the thread ends.
  struct thread_hands {
    std::array<hand, classes> of{};
    ~thread_hands() {
      ended_ = true;  // frees during the rest of the thread's exit go to operator delete
      for (std::size_t c = 0; c < classes; ++c)
        if (of[c].head) give_batch(c, of[c]);
    }
  };

  static std::size_t rounded(std::size_t size) noexcept { return (size + granule - 1) / granule * granule; }
  static std::size_t class_of(std::size_t size) noexcept { return (size - 1) / granule; }
  static std::size_t class_bytes(std::size_t c) noexcept { return (c + 1) * granule; }

  /// A whole batch from the class's shelf, or an empty hand.
  static hand take_batch(std::size_t c) noexcept {
    shelf& s = shelves_[c];
    std::lock_guard lock(s.lock);
    free_block* first = s.batches;
    if (!first) return {};
    s.batches = first->next_batch;
    s.kept -= first->count;
    return {first, first->count};
  }

  /// A chain of blocks new from operator new, one short of a batch (or fewer, when memory runs out). Made together
  /// because each malloc after an idle spell is a row of cache misses (a record's allocation took 1.1 µs in a
  /// submit to a sleeping pool, 0.36 µs with this); in a row, all but the first find malloc's lines in the cache.
  static hand fresh_batch(std::size_t c) noexcept {
    hand h;
    for (std::size_t i = 0; i + 1 < batch; ++i) {
      void* p = ::operator new(class_bytes(c), std::nothrow);
      if (!p) break;
      h.head = ::new (p) free_block{h.head};
      ++h.count;
    }
    return h;
  }

  /// Puts a chain on the class's shelf, or frees it when the shelf is full.
  static void give_batch(std::size_t c, hand h) noexcept {
    shelf& s = shelves_[c];
    {
      std::lock_guard lock(s.lock);
      if (s.kept + h.count <= kept_bytes / class_bytes(c)) {
        h.head->next_batch = s.batches;
        h.head->count = h.count;
        s.batches = h.head;
        s.kept += h.count;
        return;
      }
    }
    while (free_block* b = h.head) {
      h.head = b->next;
      ::operator delete(b, class_bytes(c));
    }
  }

  // Made at compile time (defined below the class), so there is no first-use guard that a fork() could catch half
  // taken, and never destroyed (nothing to destroy), so records freed during static destruction still find it.
  static std::array<shelf, classes> shelves_;
  static thread_local thread_hands hands_;  // defined below the class
  static inline thread_local bool ended_ = false;  // trivially destroyed: still readable while the thread ends

  // The child of a fork() has only the forking thread: a lock that another thread held at that moment would stay
  // taken for ever, so the child starts with every lock open. (A section cut short by the fork leaves its shelf
  // usable: at worst a batch is lost or a count is off.)
  static void open_after_fork() noexcept {
    for (shelf& each : shelves_) ::new (&each.lock) spin_lock();
  }
  static inline const bool fork_handler_ = (pthread_atfork(nullptr, nullptr, &open_after_fork), true);
};

inline constinit std::array<block_cache::shelf, block_cache::classes> block_cache::shelves_{};
inline thread_local block_cache::thread_hands block_cache::hands_;

}  // namespace tether::inline v1::detail
