// SPDX-License-Identifier: BSL-1.0
// Freed task records kept by size for the next submissions, so that making and freeing them skips malloc's locks.
#pragma once

#include <tether/config.hpp>
#include <tether/detail/spin_lock.hpp>

#include <array>
#include <cstddef>
#include <mutex>
#include <new>

#include <pthread.h>

namespace tether::inline v1::detail {

/// A record is allocated by the submitting thread and freed by a worker. glibc sends such a free back to the
/// allocating thread's arena, under that arena's lock, which the submitter holds for its next malloc: in the
/// throughput benchmark about every second task paid a futex system call there. Freed blocks wait here instead, per
/// size class of 64 bytes, up to 256 KiB per class, for the next record of their class; beyond that, and for
/// blocks over 1 KiB, memory goes back to operator delete. One process-wide cache, never destroyed, so a record
/// may outlive its manager. With TETHER_RECYCLE_MEMORY 0 (the default under AddressSanitizer) nothing is kept, but
/// sizes are rounded the same way, so code built either way may free what the other allocated.
/// Only for types of the default new alignment: over-aligned ones go to the aligned operator new.
/// **Thread safety:** every function from any thread.
class block_cache {
public:
  static void* allocate(std::size_t size) {
    if (size > largest) return ::operator new(size);
    if (!TETHER_RECYCLE_MEMORY) return ::operator new(rounded(size));
    shelf& s = shelf_for(size);
    {
      std::lock_guard lock(s.lock);
      if (free_block* b = s.head) {
        s.head = b->next;
        --s.count;
        return b;
      }
    }
    return ::operator new(rounded(size));
  }

  static void deallocate(void* p, std::size_t size) noexcept {
    if (size > largest) return ::operator delete(p, size);
    if (!TETHER_RECYCLE_MEMORY) return ::operator delete(p, rounded(size));
    shelf& s = shelf_for(size);
    {
      std::lock_guard lock(s.lock);
      if (s.count < kept_bytes / rounded(size)) {
        s.head = ::new (p) free_block{s.head};
        ++s.count;
        return;
      }
    }
    ::operator delete(p, rounded(size));
  }

private:
  static constexpr std::size_t granule = 64, largest = 1024, kept_bytes = 256 * 1024;
  struct free_block {
    free_block* next;
  };
  struct alignas(64) shelf {
    spin_lock lock;
    free_block* head = nullptr;  // guarded by lock
    std::size_t count = 0;       // guarded by lock
  };

  static std::size_t rounded(std::size_t size) noexcept { return (size + granule - 1) / granule * granule; }
  static shelf& shelf_for(std::size_t size) noexcept { return shelves_[(size - 1) / granule]; }

  // Made at compile time (defined below the class), so there is no first-use guard that a fork() could catch half
  // taken, and never destroyed (nothing to destroy), so records freed during static destruction still find it.
  static std::array<shelf, largest / granule> shelves_;

  // The child of a fork() has only the forking thread: a lock that another thread held at that moment would stay
  // taken for ever, so the child starts with every lock open. (A section cut short by the fork leaves its list
  // usable: at worst one block is lost or a count is one off.)
  static void open_after_fork() noexcept {
    for (shelf& each : shelves_) ::new (&each.lock) spin_lock();
  }
  static inline const bool fork_handler_ = (pthread_atfork(nullptr, nullptr, &open_after_fork), true);
};

inline constinit std::array<block_cache::shelf, block_cache::largest / block_cache::granule> block_cache::shelves_{};

}  // namespace tether::inline v1::detail
