// SPDX-License-Identifier: BSL-1.0
// The queued forms of work for affine_executor: fire-and-forget, future-backed, and blocking calls with timeouts.
#pragma once

#include <tether/context.hpp>
#include <tether/detail/wait.hpp>
#include <tether/error.hpp>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <exception>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <string_view>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

// g++ says __SANITIZE_THREAD__, clang answers __has_feature(thread_sanitizer).
#if defined(__SANITIZE_THREAD__)
#  define TETHER_AFFINE_TSAN 1
#elif defined(__has_feature)
#  if __has_feature(thread_sanitizer)
#    define TETHER_AFFINE_TSAN 1
#  endif
#endif

namespace tether::inline v1::detail {

/// One function handed to an affine_executor. Exactly one of run() or abandon() is called, once, and that call
/// disposes of the job; nothing touches it afterwards.
class affine_job {
public:
  /// On the owner thread: runs the function under its submitter's context; false when it did not run (a call
  /// withdrawn by its timed-out caller). `escaped` receives what escaped a posted function, for the error handler;
  /// every other kind delivers its outcome to its waiter.
  virtual bool run(std::exception_ptr& escaped) noexcept = 0;
  /// The function will never run: fails its waiter with errc::abandoned, naming `executor`.
  virtual void abandon(std::string_view executor) noexcept = 0;

  affine_job* next = nullptr;  ///< the executor's inbox links its jobs through here

protected:
  ~affine_job() = default;
};

/// The exception a waiter receives for work that was accepted but will never run.
inline std::exception_ptr abandoned_error(std::string_view api, std::string_view executor) noexcept {
  try {
    raise(errc::abandoned, "tether::affine_executor::{}: executor '{}' stopped before the function ran", api,
          executor);
  } catch (...) {
    return std::current_exception();
  }
}

/// ThreadSanitizer builds only: keeps `e` alive for the rest of the process. std::future::get() drops the future's
/// share of the state before the caller's catch handler runs, so the promise's side may free the exception while
/// the handler still reads it, ordered only by exception_ptr's count inside libstdc++.so, which TSan cannot see.
/// Real builds free it as usual; the report would be false, and tether's sanitizer runs allow no suppressions.
inline void keep_for_tsan([[maybe_unused]] const std::exception_ptr& e) noexcept {
#if defined(TETHER_AFFINE_TSAN)
  static std::mutex mutex;
  static auto* const kept = new std::vector<std::exception_ptr>;  // never destroyed: nothing frees them late
  try {
    std::lock_guard lock(mutex);
    kept->push_back(e);
  } catch (...) {
  }
#endif
}

/// post(): nobody waits; an escaping exception goes back to the executor's error handler.
template <class Fn>
class affine_post_job final : public affine_job {
public:
  explicit affine_post_job(bound<Fn> fn) : fn_(std::move(fn)) {}

  bool run(std::exception_ptr& escaped) noexcept override {
    try {
      std::move(fn_)();
    } catch (...) {
      escaped = std::current_exception();
    }
    delete this;
    return true;
  }
  void abandon(std::string_view) noexcept override { delete this; }

private:
  bound<Fn> fn_;
};

/// submit(): the outcome, or errc::abandoned, travels through a std::promise.
template <class Fn, class R>
class affine_submit_job final : public affine_job {
public:
  explicit affine_submit_job(bound<Fn> fn) : fn_(std::move(fn)) {}

  std::future<R> future() { return promise_.get_future(); }

  bool run(std::exception_ptr&) noexcept override {
    try {
      if constexpr (std::is_void_v<R>) {
        std::move(fn_)();
        promise_.set_value();
      } else {
        promise_.set_value(std::move(fn_)());
      }
    } catch (...) {
      keep_for_tsan(std::current_exception());
      promise_.set_exception(std::current_exception());
    }
    delete this;
    return true;
  }
  void abandon(std::string_view executor) noexcept override {
    const std::exception_ptr error = abandoned_error("submit", executor);
    keep_for_tsan(error);
    promise_.set_exception(error);
    delete this;
  }

private:
  bound<Fn> fn_;
  std::promise<R> promise_;
};

/// Where a blocking call keeps its value: R, a pointer for R&, nothing for void.
template <class R>
struct affine_value {
  std::optional<R> value;
  template <class F>
  void fill(F&& f) { value.emplace(std::invoke(std::forward<F>(f))); }
  R take() { return std::move(*value); }
};
template <class R>
struct affine_value<R&> {
  R* value = nullptr;
  template <class F>
  void fill(F&& f) { value = &std::invoke(std::forward<F>(f)); }
  R& take() { return *value; }
};
template <>
struct affine_value<void> {
  template <class F>
  void fill(F&& f) { std::invoke(std::forward<F>(f)); }
  void take() {}
};

/// call() and call_for(): shared by the caller, who waits on `done_`, and the queue. The state word decides who
/// owns the function: the owner claims it (pending -> running) before it starts, a timed-out caller claims it
/// (pending -> cancelled) so it can never start later, and a stopping executor claims it (pending -> abandoned).
template <class Fn, class R>
class affine_call_job final : public affine_job {
public:
  explicit affine_call_job(bound<Fn> fn) : fn_(std::move(fn)) {}

  bool run(std::exception_ptr&) noexcept override {
    const bool started = claim(running);
    if (started) {
      try {
        result_.fill(std::move(fn_));
      } catch (...) {
        error_ = std::current_exception();
      }
      done_.set();
    }
    release();
    return started;
  }
  void abandon(std::string_view executor) noexcept override {
    if (claim(abandoned)) {
      error_ = abandoned_error("call", executor);
      done_.set();
    }
    release();
  }

  /// The caller: waits until the function ran (or was abandoned) or `deadline` passed without a start. True when an
  /// outcome is there; false when the caller withdrew the call, which then never starts.
  bool wait_until(steady_clock::time_point deadline) noexcept {
    // A plain thread spins (politely) first: most calls are answered within that window, and then the owner's
    // set() finds nobody to wake. A fiber goes straight to the event, which suspends only the fiber.
    if (fiber_blocker_slot() == nullptr &&
        spin_for([this] { return done_.is_set(); }, parker::default_spin, deadline, true))
      return true;
    if (done_.wait_until(deadline)) return true;
    if (claim(cancelled)) return false;
    done_.wait();  // the owner started it first: a started call is always waited for
    return true;
  }

  /// The caller, after wait_until() returned true: the value, or the rethrown exception.
  R take() {
    // Moved out, so the caller's thread holds the exception's last reference and whichever thread deletes the
    // job drops none (ThreadSanitizer cannot see exception_ptr's count, which lives in libstdc++.so).
    if (error_) std::rethrow_exception(std::exchange(error_, nullptr));
    return result_.take();
  }

  /// Drops the caller's reference; the queue holds the other one.
  void release() noexcept {
    // acq_rel: the last owner of the job sees every write the other made before it deletes.
    if (refs_.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
  }

private:
  enum : std::uint32_t { pending, running, cancelled, abandoned };

  bool claim(std::uint32_t to) noexcept {
    std::uint32_t expected = pending;
    // acq_rel: whoever wins owns fn_, error_ and result_ from here on; the loser learns only that it lost.
    return state_.compare_exchange_strong(expected, to, std::memory_order_acq_rel);
  }

  // What both threads touch on every call comes first, so that it shares the job's first cache line.
  std::atomic<std::uint32_t> state_{pending};
  std::atomic<std::uint32_t> refs_{2};
  std::exception_ptr error_;
  affine_value<R> result_;
  event done_;
  bound<Fn> fn_;
};

/// Drops the caller's reference to a call job.
struct affine_release {
  template <class Job>
  void operator()(Job* job) const noexcept { job->release(); }
};

/// The caller's reference to its call job.
template <class Fn, class R>
using affine_call_ptr = std::unique_ptr<affine_call_job<Fn, R>, affine_release>;

}  // namespace tether::inline v1::detail
