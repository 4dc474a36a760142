// SPDX-License-Identifier: BSL-1.0
// A one-thread parking spot: spin briefly, then sleep on a futex until unparked or a deadline passes.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <ctime>
#include <thread>

#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

namespace tether::inline v1::detail {

using steady_clock = std::chrono::steady_clock;

/// Tells the CPU that we are spinning, so a sibling hyper-thread gets the core.
inline void spin_pause() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield" ::: "memory");
#endif
}

/// Spins until `ready()`, for at most `spin` and never past `deadline`; true when ready. The clock is read only
/// once the first checks have failed: a hand-off between two awake threads is over before then, and a clock read
/// costs about as much as the hand-off. With `polite`, it yields the CPU every few dozen checks: a caller waiting
/// for its answer lets an owner that shares its core (a busy machine) run at once, instead of keeping it off the
/// core for the whole window. An idle owner's spin is not polite: yielding there made the scheduler keep owner
/// and producer on one core, and a woken owner then waited a whole tick for a busy producer.
template <class Ready>
bool spin_for(Ready&& ready, std::chrono::nanoseconds spin, steady_clock::time_point deadline, bool polite) noexcept {
  for (int i = 0; i < 16; ++i) {
    if (ready()) return true;
    spin_pause();
  }
  const auto until = std::min(deadline, steady_clock::now() + spin);
  for (;;) {
    for (int i = 0; i < 64; ++i) {
      if (ready()) return true;
      spin_pause();
    }
    if (steady_clock::now() >= until) return false;
    if (polite) std::this_thread::yield();
  }
}

/// Where one thread sleeps until another wakes it. Holds at most one wake token: an unpark() before the park()
/// makes that park() return at once. Spinning first matters because a futex wake costs about 11 µs here, while a
/// hand-off between two awake threads takes about 1 µs.
/// **Thread safety:** park*() from the one owning thread; unpark() from any thread.
class parker {
public:
  /// How long park*() spins before it sleeps in the kernel.
  static constexpr std::chrono::microseconds default_spin{20};

  /// Blocks until unpark() or `deadline`; true when a wake token was taken, false on the deadline.
  bool park_until(steady_clock::time_point deadline, std::chrono::nanoseconds spin = default_spin) noexcept {
    if (take_token() || spin_for(spin, deadline)) return true;
    std::uint32_t expected = empty;
    // acq_rel: a failed exchange means a token arrived; acquire pairs with unpark()'s release.
    if (!state_.compare_exchange_strong(expected, parked, std::memory_order_acq_rel)) return take_token();
    for (;;) {
      futex_wait_until(deadline);
      if (take_token()) return true;
      if (steady_clock::now() < deadline) continue;  // a spurious wake: sleep again
      expected = parked;
      if (state_.compare_exchange_strong(expected, empty, std::memory_order_acq_rel)) return false;
      return take_token();  // the token came between the timeout and the withdrawal
    }
  }

  void park() noexcept { park_until(steady_clock::time_point::max()); }

  /// Leaves a wake token and wakes the owner if it sleeps.
  void unpark() noexcept {
    // release: what the waker wrote before unpark() is visible to the owner after park() returns.
    if (state_.exchange(notified, std::memory_order_release) == parked) futex_wake();
  }

private:
  enum : std::uint32_t { empty, notified, parked };

  bool take_token() noexcept {
    std::uint32_t expected = notified;
    return state_.compare_exchange_strong(expected, empty, std::memory_order_acquire);
  }

  bool spin_for(std::chrono::nanoseconds spin, steady_clock::time_point deadline) noexcept {
    if (spin <= spin.zero()) return false;
    // relaxed: only a hint; take_token()'s acquire is what orders us after the waker. Polite: the thread that will
    // wake us may be waiting for this core (parker's own spin serves waiters; idle loops spin on their own terms).
    return detail::spin_for([this] { return state_.load(std::memory_order_relaxed) == notified && take_token(); },
                            spin, deadline, true);
  }

  void futex_wait_until(steady_clock::time_point deadline) noexcept {
    // steady_clock is CLOCK_MONOTONIC on Linux; FUTEX_WAIT_BITSET takes an absolute time on that clock.
    timespec ts{};
    const timespec* timeout = nullptr;
    if (deadline != steady_clock::time_point::max()) {
      const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(deadline.time_since_epoch()).count();
      ts.tv_sec = static_cast<time_t>(ns / 1'000'000'000);
      ts.tv_nsec = static_cast<long>(ns % 1'000'000'000);
      timeout = &ts;
    }
    syscall(SYS_futex, &state_, FUTEX_WAIT_BITSET_PRIVATE, parked, timeout, nullptr, FUTEX_BITSET_MATCH_ANY);
  }

  void futex_wake() noexcept { syscall(SYS_futex, &state_, FUTEX_WAKE_PRIVATE, 1, nullptr, nullptr, 0); }

  std::atomic<std::uint32_t> state_{empty};
  static_assert(sizeof(std::atomic<std::uint32_t>) == sizeof(std::uint32_t), "a futex word must be 32 bits");
};

}  // namespace tether::inline v1::detail
