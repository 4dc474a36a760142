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
/// core for the whole window. An idle affine owner's spin is not polite: yielding there made the scheduler keep
/// owner and producer on one core, and a woken owner then waited a whole tick for a busy producer. An idle task
/// worker's is (see fiber_worker::spin_until): there the spinner starved the submitter.
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

/// Sleeps in the kernel while `word` holds `expected`, until futex_wake_one() or `deadline` (steady clock; max():
/// none). May return early for no reason: callers look at the word again.
inline void futex_wait(std::atomic<std::uint32_t>& word, std::uint32_t expected,
                       steady_clock::time_point deadline = steady_clock::time_point::max()) noexcept {
  static_assert(sizeof(std::atomic<std::uint32_t>) == sizeof(std::uint32_t), "a futex word must be 32 bits");
  // steady_clock is CLOCK_MONOTONIC on Linux; FUTEX_WAIT_BITSET takes an absolute time on that clock.
  timespec ts{};
  const timespec* timeout = nullptr;
  if (deadline != steady_clock::time_point::max()) {
    const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(deadline.time_since_epoch()).count();
    ts.tv_sec = static_cast<time_t>(ns / 1'000'000'000);
    ts.tv_nsec = static_cast<long>(ns % 1'000'000'000);
    timeout = &ts;
  }
  syscall(SYS_futex, &word, FUTEX_WAIT_BITSET_PRIVATE, expected, timeout, nullptr, FUTEX_BITSET_MATCH_ANY);
}

/// Wakes one thread sleeping in futex_wait() on `word`.
inline void futex_wake_one(std::atomic<std::uint32_t>& word) noexcept {
  syscall(SYS_futex, &word, FUTEX_WAKE_PRIVATE, 1, nullptr, nullptr, 0);
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
      futex_wait(state_, parked, deadline);
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
    if (state_.exchange(notified, std::memory_order_release) == parked) futex_wake_one(state_);
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

  std::atomic<std::uint32_t> state_{empty};
};

/// The idle spin window of a loop that spins before it parks (an affine owner, an idle task worker). Spinning
/// costs more than CPU time: the scheduler (EEVDF) charges it to the spinner, which then, woken on a core that
/// another thread keeps busy, waits for that thread's whole slice (measured: milliseconds at the 99th percentile
/// with a fixed 20 µs window, when work came every 300 µs). So the window follows how work arrives: when work came
/// soon after the loop gave up spinning, the next window is the whole of it; when it came late, half the last one.
/// **Thread safety:** none; the loop's own thread.
class adaptive_spin {
public:
  static constexpr std::chrono::nanoseconds shortest{1'000}, longest{parker::default_spin};

  std::chrono::nanoseconds window() const noexcept { return window_; }

  /// After a park that began `slept` ago; `woken`: it ended by a wake, not its deadline (which counts as late).
  void parked(bool woken, steady_clock::duration slept) noexcept {
    window_ = woken && slept < longest ? longest : std::max(shortest, window_ / 2);
  }

private:
  std::chrono::nanoseconds window_ = longest;
};

}  // namespace tether::inline v1::detail
