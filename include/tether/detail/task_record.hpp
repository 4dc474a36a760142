// SPDX-License-Identifier: BSL-1.0
// One task submission: its function, its state, and its latest value, shared by the manager, workers and handles.
#pragma once

#include <tether/context.hpp>
#include <tether/detail/block_cache.hpp>
#include <tether/detail/coarse_clock.hpp>
#include <tether/detail/name_hash.hpp>
#include <tether/detail/ref_counted.hpp>
#include <tether/detail/spin_lock.hpp>
#include <tether/detail/task_types.hpp>
#include <tether/detail/wait.hpp>
#include <tether/error.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <stop_token>
#include <string>
#include <string_view>
#include <type_traits>
#include <typeinfo>
#include <utility>

namespace tether::inline v1 {

class task_context;

namespace detail {

struct queue_group;

/// Where a task is as the fair queue sees it; guarded by the queue's mutex.
enum class task_place : std::uint8_t { queued, running, finished };

/// AddressSanitizer builds: clears the stale poison that unwound frames leave on the dead part of the running
/// fiber's stack. Boost.Context as Debian builds it does not tell ASan about fiber stacks, so ASan cannot clean up
/// after an exception there itself, and the next throw on that fiber would trip over the leftovers. Called before
/// tether throws from code that may run in a task, and after each task. Elsewhere: does nothing.
#if defined(__SANITIZE_ADDRESS__)
TETHER_DECL void scrub_fiber_stack() noexcept;
#else
inline void scrub_fiber_stack() noexcept {}
#endif

/// The text of an exception for task_result::error_message: its what(), or a note when it has none.
TETHER_DECL std::string describe_exception(const std::exception_ptr& error) noexcept;

/// One submission. Every submission gets its own record, so a replaced task can only ever write to its own: its
/// successor under the same id has another record. Records are shared (reference counted) between the registry,
/// the fair queue, the worker running the task and the handles.
/// **Thread safety:** the atomics and events from any thread; the result fields behind `mutex_`; the queue links
/// only under the fair queue's mutex, but for the submit that sets them before the queue's intake publishes the
/// record.
class task_record : public ref_counted {
public:
  /// `hash` is name_hash(id).
  TETHER_DECL task_record(std::string id, std::uint64_t hash, std::string group, unsigned weight,
                          tether::context ctx);

  // Made by submitters and freed by workers: see block_cache. (The virtual destructor passes the full size.) A task
  // whose function or result is over-aligned gets the aligned forms, which the cache does not serve.
  static void* operator new(std::size_t size) { return block_cache::allocate(size); }
  static void operator delete(void* p, std::size_t size) noexcept { block_cache::deallocate(p, size); }
  static void* operator new(std::size_t size, std::align_val_t align) { return ::operator new(size, align); }
  static void operator delete(void* p, std::size_t size, std::align_val_t align) noexcept {
    ::operator delete(p, size, align);
  }

  const std::string id;
  const std::uint64_t hash;  ///< of the id: the registry's and the fair queue's lookups reuse it
  const std::string group;
  const unsigned weight;
  const tether::context ctx;       ///< the submitter's context, installed around the task
  /// Wall-clock times are read at the events (a steady clock mapped to wall time would be wrong after a suspend, when
  /// CLOCK_MONOTONIC stops, or a clock step); one read serves as a task's end and the next task's start when a worker
  /// goes straight on.
  const std::chrono::system_clock::time_point submitted;

  // The fair queue's links: its mutex guards them, once a submit has set them and the intake published the record.
  task_record* prev = nullptr;
  task_record* next = nullptr;
  queue_group* home = nullptr;
  task_place place = task_place::queued;

  std::atomic<task_status> status{task_status::queued};  ///< stored last by each transition (release)
  std::atomic<task_end> request{task_end::none};         ///< the first cancel request; later ones change nothing
  /// A newer submission took this record's place under its id in the registry (set under the id's shard lock):
  /// evicting it later forgets nothing. relaxed: a stale read costs a needless lookup, never a wrong answer.
  std::atomic<bool> superseded{false};

  std::atomic<std::int64_t> finished_coarse_ns{0};  ///< coarse_clock time of the end, for retention
  /// The end time for retention; read it only once the status is final (an acquire load saw it).
  coarse_clock::time_point ended_at() const noexcept {
    // relaxed: its partner is the release store of the final `status`, which came after this field.
    return coarse_clock::time_point(std::chrono::nanoseconds(finished_coarse_ns.load(std::memory_order_relaxed)));
  }
  event cancelled;  ///< set with the first cancel request: wakes this_task::sleep_for
  event done;       ///< set once the status is final

  /// Records the first cancel request and signals it; true when this call was the first.
  TETHER_DECL bool request_stop(task_end why) noexcept;
  /// Fires once a cancel was requested. The stop state is made on first use: most tasks never ask for it, and
  /// making one costs an allocation (running out of memory there terminates, as in any noexcept function).
  TETHER_DECL std::stop_token stop_token() const noexcept;
  /// Decides, once, whether the task starts: the worker that took it out of the queue claims the start, a cancel
  /// claims the drop. Only the winner goes on (the worker runs it, the cancel ends it as cancelled); so a task that
  /// a worker has taken but not started yet is still cancelled "from the queue" and never starts.
  bool claim_start() noexcept { return claim(start_claimed); }
  bool claim_drop() noexcept { return claim(drop_claimed); }
  /// True once a worker claimed the start (acquire: read after `done`, it orders nothing else).
  bool was_started() const noexcept { return claim_.load(std::memory_order_acquire) == start_claimed; }
  /// queued → running at `at`, by the worker that claimed the start.
  TETHER_DECL void mark_started(std::chrono::system_clock::time_point at) noexcept;
  /// The final status, once, by whoever ended the task; the caller sets `done` afterwards. Returns the end time.
  TETHER_DECL std::chrono::system_clock::time_point finish(task_status final_status, std::exception_ptr error) noexcept;
  /// progress(): a fraction in [0, 1] and a message; bumps the sequence.
  TETHER_DECL void set_progress(double fraction, std::string_view message);
  /// Copies the state shared by task_result and task_info.
  TETHER_DECL void fill(task_fields& out) const;

  /// What a failed task threw.
  std::exception_ptr stored_error() const {
    std::lock_guard lock(mutex_);
    return error_;
  }

  /// Asks for the record's cache lines: the worker that takes a task touches nearly all of them (they are in the
  /// submitter's cache), and so does evicting it (they are in no cache by then). Asked for together, their misses
  /// overlap instead of coming one by one.
  void prefetch_lines() const noexcept {
    // One line past the record: where the function and the value usually are. The write hint becomes a plain
    // prefetch on baseline x86-64 (PREFETCHW needs -mprfchw); PREFETCHW itself made no difference here.
    for (std::size_t at = 0; at < sizeof(task_record) + 64; at += 64)
      __builtin_prefetch(reinterpret_cast<const char*>(this) + at, 1);
  }

  bool cancel_requested() const noexcept { return request.load(std::memory_order_acquire) != task_end::none; }
  task_status current_status() const noexcept { return status.load(std::memory_order_acquire); }
  bool has_ended() const noexcept { return is_final(current_status()); }

  /// Runs the function and destroys it; returns how it ended. `error` gets what a failed task threw.
  virtual task_status run(task_context& tc, std::exception_ptr& error) noexcept = 0;
  /// Destroys a function that will never run (cancelled before it started).
  virtual void drop() noexcept = 0;
  /// typeid(R) of the task's result.
  virtual const std::type_info& result_type() const noexcept = 0;
  /// publish() paths: an exact R, text for an R made from std::string, a number for an arithmetic R.
  virtual bool publish_same(const std::type_info& type, void* value) = 0;
  virtual bool publish_text(std::string_view text) = 0;
  virtual bool publish_number(long double number) = 0;

protected:
  TETHER_DECL void fill_locked(task_fields& out) const;

  mutable spin_lock mutex_;  // short sections, taken by the worker at every start and end
  enum : std::uint8_t { unclaimed, start_claimed, drop_claimed };
  bool claim(std::uint8_t to) noexcept {
    std::uint8_t expected = unclaimed;
    // acq_rel: the winner owns the function and the outcome; the loser only learns that it lost.
    return claim_.compare_exchange_strong(expected, to, std::memory_order_acq_rel);
  }
  std::atomic<std::uint8_t> claim_{unclaimed};

  /// What many tasks never use, made on first use: every record's cache lines cross from the submitter's core to
  /// a worker's, and moving these 88 bytes out took a small task's record from six lines to five.
  struct extras {
    std::optional<std::stop_source> stop;
    double progress = 0.0;
    std::string message;
    std::string error_message;
  };
  /// The extras, made if need be (mutex_ held). Throws bad_alloc.
  extras& more() const {
    if (!extras_) extras_ = std::make_unique<extras>();
    return *extras_;
  }

  // Guarded by mutex_.
  mutable std::unique_ptr<extras> extras_;
  std::uint64_t sequence_ = 0;
  std::exception_ptr error_;
  task_end reason_ = task_end::none;
  std::chrono::system_clock::time_point finished_;
  /// Written once, without the lock, before `status` becomes running (release); read after `status` (acquire).
  std::atomic<std::chrono::system_clock::rep> started_ns_{0};
  /// The start time; zero before the start. relaxed: read on the thread that wrote it, or after an acquire load of
  /// `status` that saw it running (its release store comes after this one).
  std::chrono::system_clock::time_point started_at() const noexcept {
    return std::chrono::system_clock::time_point(
        std::chrono::system_clock::duration(started_ns_.load(std::memory_order_relaxed)));
  }
};

/// A record whose task returns R; holds the latest value.
template <class R>
class typed_record : public task_record {
public:
  using task_record::task_record;

  const std::type_info& result_type() const noexcept final { return typeid(R); }

  void snapshot(task_result<R>& out) const {
    std::lock_guard lock(mutex_);
    fill_locked(out);
    out.value = value_;
  }

  /// The value for task_handle::get(): a copy, or for a move-only R the value itself (so get() works once).
  R value_for_get() {
    std::lock_guard lock(mutex_);
    if constexpr (std::is_copy_constructible_v<R>) return *value_;
    else return std::move(*value_);
  }

  bool publish_same(const std::type_info& type, void* value) final {
    if (type != typeid(R)) return false;
    store(std::move(*static_cast<R*>(value)));
    return true;
  }
  bool publish_text(std::string_view text) final {
    if constexpr (std::is_constructible_v<R, std::string>) {
      store(R(std::string(text)));
      return true;
    } else {
      return false;
    }
  }
  bool publish_number(long double number) final {
    if constexpr (std::is_arithmetic_v<R>) {
      store(static_cast<R>(number));
      return true;
    } else {
      return false;
    }
  }

protected:
  void store(R&& value) {
    std::lock_guard lock(mutex_);
    value_ = std::move(value);
    ++sequence_;
  }

private:
  std::optional<R> value_;  // guarded by mutex_
};

template <>
class typed_record<void> : public task_record {
public:
  using task_record::task_record;
  const std::type_info& result_type() const noexcept final { return typeid(void); }
  void snapshot(task_result<void>& out) const {
    std::lock_guard lock(mutex_);
    fill_locked(out);
  }
  bool publish_same(const std::type_info&, void*) final { return false; }
  bool publish_text(std::string_view) final { return false; }
  bool publish_number(long double) final { return false; }
};

/// The result type of a task function: it takes a task_context& or nothing.
template <class Fn>
struct task_return {
  using type = std::invoke_result_t<Fn>;
};
template <class Fn>
  requires std::is_invocable_v<Fn, task_context&>
struct task_return<Fn> {
  using type = std::invoke_result_t<Fn, task_context&>;
};

/// A record together with the function it runs.
template <class R, class Fn>
class task_body final : public typed_record<R> {
public:
  template <class F>
  task_body(F&& fn, std::string id, std::uint64_t hash, std::string group, unsigned weight, tether::context ctx)
      : typed_record<R>(std::move(id), hash, std::move(group), weight, std::move(ctx)),
        fn_(std::in_place, std::forward<F>(fn)) {}

  task_status run(task_context& tc, std::exception_ptr& error) noexcept override {
    const task_status ended = guarded_call(tc, error);
    fn_.reset();  // the task's captures die before anyone learns that it ended
    return ended;
  }

  void drop() noexcept override { fn_.reset(); }

private:
  task_status guarded_call(task_context& tc, std::exception_ptr& error) noexcept {
    try {
      if constexpr (std::is_void_v<R>) call(tc);
      else this->store(call(tc));
      return task_status::succeeded;
    } catch (const task_cancelled&) {
      return task_status::cancelled;
    } catch (...) {
      error = std::current_exception();
      return task_status::failed;
    }
  }

  decltype(auto) call(task_context& tc) {
    if constexpr (std::is_invocable_v<Fn, task_context&>) return std::invoke(std::move(*fn_), tc);
    else return std::invoke(std::move(*fn_));
  }

  std::optional<Fn> fn_;
};

}  // namespace detail
}  // namespace tether::inline v1

#if TETHER_HEADER_ONLY
#  include <tether/impl/task_record.ipp>
#endif
