// SPDX-License-Identifier: BSL-1.0
// Blocking and waking one caller, a plain thread or a tether fiber alike, and the one-shot event built on it.
#pragma once

#include <tether/config.hpp>
#include <tether/detail/parker.hpp>
#include <tether/detail/spin_lock.hpp>

#include <atomic>
#include <chrono>
#include <mutex>

namespace tether::inline v1::detail {

class blocker;

/// now + timeout, saturating instead of overflowing for huge timeouts (e.g. duration::max()).
template <class Rep, class Period>
steady_clock::time_point deadline_after(std::chrono::duration<Rep, Period> timeout) noexcept {
  const auto now = steady_clock::now();
  if (timeout <= timeout.zero()) return now;
  using ns = std::chrono::nanoseconds;
  const auto room = steady_clock::time_point::max() - now;
  if (std::chrono::duration_cast<std::chrono::duration<double, std::nano>>(timeout).count() >=
      static_cast<double>(std::chrono::duration_cast<ns>(room).count()))
    return steady_clock::time_point::max();
  return now + std::chrono::duration_cast<steady_clock::duration>(timeout);
}

/// One registration of a blocked caller. It lives on the caller's stack, and the caller does not return before
/// every wake aimed at it has arrived, so a waker never touches a dead waiter.
struct waiter {
  blocker* owner = nullptr;  ///< suspends and resumes the caller
  void* agent = nullptr;     ///< the owner's handle for the caller (a parker, a fiber context)
  waiter* next = nullptr;    ///< the event's list, guarded by the event's mutex
  waiter* prev = nullptr;
  bool linked = false;       ///< in an event's list; guarded by the event's mutex
  bool blocked = false;      ///< owner-private: the caller is suspended in block_until
  bool woken = false;        ///< owner-private: a wake arrived while the caller was not suspended
};

/// Suspends and resumes callers of one kind. Threads park on a futex; the task manager installs a blocker for its
/// fibers that suspends the fiber and lets its worker thread run other fibers.
/// **Thread safety:** prepare() and block_until() by the waiting caller; wake() from any thread.
class blocker {
public:
  /// Fills `w.owner` and `w.agent` for the calling thread or fiber.
  virtual void prepare(waiter& w) noexcept = 0;
  /// Suspends the caller until wake(w) or `deadline`; true when woken. A wake that came first is taken at once.
  virtual bool block_until(waiter& w, steady_clock::time_point deadline) noexcept = 0;
  /// Ends the current or next block_until(w); called once per registration, from any thread.
  virtual void wake(waiter& w) noexcept = 0;

protected:
  ~blocker() = default;
};

/// The fiber blocker of the fiber running on this thread, or nullptr on a plain thread. Fiber workers set it.
TETHER_DECL blocker*& fiber_blocker_slot() noexcept;

/// The blocker for the current caller: the running fiber's, or this thread's futex parker.
TETHER_DECL blocker& current_blocker() noexcept;

/// A one-shot flag that callers wait for: set() once, and every waiter, present or future, goes on.
/// Waiting spins briefly on a thread, then sleeps; on a tether fiber it suspends only that fiber.
/// **Thread safety:** every member from any thread.
class event {
public:
  event() = default;
  event(const event&) = delete;
  event& operator=(const event&) = delete;

  /// Sets the flag and wakes every waiter. Later calls do nothing.
  TETHER_DECL void set() noexcept;

  bool is_set() const noexcept { return set_.load(std::memory_order_acquire); }

  /// Waits until set() or `deadline`; true when set.
  TETHER_DECL bool wait_until(steady_clock::time_point deadline) noexcept;

  template <class Rep, class Period>
  bool wait_for(std::chrono::duration<Rep, Period> timeout) noexcept {
    return wait_until(deadline_after(timeout));
  }

  void wait() noexcept { wait_until(steady_clock::time_point::max()); }

private:
  void link(waiter& w) noexcept;
  void unlink(waiter& w) noexcept;

  // The flags first: a caller that polls is_set() then shares one cache line with them, not with the mutex.
  std::atomic<bool> set_{false};
  std::atomic<bool> waited_{false};  // a waiter has looked under the lock: set() must take the lock to wake it
  waiter* head_ = nullptr;           // guarded by mutex_
  spin_lock mutex_;                  // a few pointer moves at a time; small, as events are embedded by the many
};

}  // namespace tether::inline v1::detail

#if TETHER_HEADER_ONLY
#  include <tether/impl/wait.ipp>
#endif
