// SPDX-License-Identifier: BSL-1.0
// A clock that moves only when a test advances it, so session timing is tested without sleeping.
#pragma once

#include <tether/config.hpp>
#include <tether/error.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <mutex>
#include <vector>

namespace tether::inline v1 {

class manual_clock;

namespace detail {
/// Something that must catch up with a manual_clock before advance() returns: a session manager's monitor.
class clock_listener {
public:
  /// Returns once everything due at the clock's new time has been handled.
  virtual void clock_advanced() = 0;

protected:
  ~clock_listener() = default;
};

/// How session_manager registers with a clock; not for users.
struct manual_clock_access {
  static void attach(manual_clock& clock, clock_listener& listener);
  static void detach(manual_clock& clock, clock_listener& listener) noexcept;
};
}  // namespace detail

/// Time that stands still until a test moves it. `advance()` returns only after every session manager that uses the
/// clock has handled all that became due (callbacks ran on its thread, or were handed to its `deliver_on`
/// executor), so the test can check the effects at once.
///
///     tether::manual_clock clock;
///     tether::session_manager sessions({.timeout = 6s, .clock = &clock});
///     auto id = sessions.open(callbacks);
///     clock.advance(6s);                      // the session is now disconnected
///
/// It satisfies the standard Clock requirements with steady_clock's time_point, so session_info times compare
/// directly with `now()`. The clock must outlive the session managers that use it.
/// **Thread safety:** every member from any thread, except that `advance()` must not be called from a callback of a
/// session manager that uses this clock (it would wait for itself).
class manual_clock {
public:
  using duration = std::chrono::steady_clock::duration;
  using rep = duration::rep;
  using period = duration::period;
  using time_point = std::chrono::steady_clock::time_point;
  static constexpr bool is_steady = true;

  /// A clock that reads `start` until advanced.
  explicit manual_clock(time_point start = time_point{}) noexcept : now_(start.time_since_epoch().count()) {}
  manual_clock(const manual_clock&) = delete;
  manual_clock& operator=(const manual_clock&) = delete;

  time_point now() const noexcept {
    // acquire: pairs with advance()'s release, so a reader of the new time also sees what came before it.
    return time_point(duration(now_.load(std::memory_order_acquire)));
  }

  /// Moves time forward by `d`, then waits until the session managers on this clock have caught up.
  /// A negative `d` throws `invalid_argument`.
  void advance(duration d) {
    if (d < duration::zero())
      detail::raise(errc::invalid_argument, "tether::manual_clock::advance: time cannot go back ({} ns)", d.count());
    std::lock_guard lock(mutex_);  // one advance at a time, so each waits for the others' effects too
    now_.fetch_add(d.count(), std::memory_order_release);
    for (detail::clock_listener* listener : listeners_) listener->clock_advanced();
  }

private:
  friend struct detail::manual_clock_access;

  std::atomic<rep> now_;
  std::mutex mutex_;                                 // guards listeners_ and serialises advance()
  std::vector<detail::clock_listener*> listeners_;
};

namespace detail {
inline void manual_clock_access::attach(manual_clock& clock, clock_listener& listener) {
  std::lock_guard lock(clock.mutex_);
  clock.listeners_.push_back(&listener);
}

inline void manual_clock_access::detach(manual_clock& clock, clock_listener& listener) noexcept {
  std::lock_guard lock(clock.mutex_);
  std::erase(clock.listeners_, &listener);
}
}  // namespace detail

}  // namespace tether::inline v1
