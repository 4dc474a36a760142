// SPDX-License-Identifier: BSL-1.0
// A mutex for short critical sections: it spins briefly when taken, then sleeps on a futex.
#pragma once

#include <tether/detail/parker.hpp>

#include <atomic>
#include <cstdint>

namespace tether::inline v1::detail {

/// A Lockable for sections of a few dozen instructions that several threads enter all the time (the task queue,
/// the id map). std::mutex sleeps in the kernel as soon as it finds the lock taken, and the holder then pays a
/// futex wake on unlock: microseconds, for a section that takes nanoseconds. This one spins a little first, and
/// sleeps only when the holder seems to have lost its core.
/// **Thread safety:** as std::mutex.
class spin_lock {
public:
  spin_lock() = default;
  spin_lock(const spin_lock&) = delete;
  spin_lock& operator=(const spin_lock&) = delete;

  void lock() noexcept {
    std::uint32_t expected = unlocked;
    // acquire: pairs with unlock()'s release.
    if (state_.compare_exchange_strong(expected, locked, std::memory_order_acquire, std::memory_order_relaxed)) return;
    lock_slow();
  }

  bool try_lock() noexcept {
    std::uint32_t expected = unlocked;
    return state_.compare_exchange_strong(expected, locked, std::memory_order_acquire, std::memory_order_relaxed);
  }

  void unlock() noexcept {
    // release: the section's writes are visible to the next holder.
    if (state_.exchange(unlocked, std::memory_order_release) == contended) futex_wake_one(state_);
  }

private:
  enum : std::uint32_t { unlocked, locked, contended };  // contended: someone may sleep on the futex

  void lock_slow() noexcept {
    for (int i = 0; i < 128; ++i) {
      spin_pause();
      // relaxed: only a hint; the exchange below takes the lock with acquire.
      if (state_.load(std::memory_order_relaxed) == unlocked && try_lock()) return;
    }
    // Mark the lock contended, so that its holder wakes us; we may then take it contended for nobody, which
    // costs one needless wake at most.
    while (state_.exchange(contended, std::memory_order_acquire) != unlocked) futex_wait(state_, contended);
  }

  std::atomic<std::uint32_t> state_{unlocked};
};

}  // namespace tether::inline v1::detail
