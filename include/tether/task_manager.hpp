// SPDX-License-Identifier: BSL-1.0
// Keyed tasks on a shared pool of fiber workers: submit by id, poll, cancel, fair between groups, bounded.
#pragma once

#include <tether/config.hpp>
#include <tether/context.hpp>
#include <tether/detail/task_core.hpp>
#include <tether/detail/task_record.hpp>
#include <tether/detail/task_types.hpp>
#include <tether/error.hpp>

#include <chrono>
#include <cstddef>
#include <memory>
#include <optional>
#include <stop_token>
#include <string>
#include <string_view>
#include <type_traits>
#include <typeinfo>
#include <utility>
#include <vector>

namespace tether::inline v1 {

namespace detail {
struct task_access;
}

/// What a running task sees of itself: its id, whether it was asked to stop, and a way to report.
/// **Thread safety:** use it from the task that received it (it dies when the task ends).
///
///     tasks.submit("report-7", [](tether::task_context& task) {
///       for (int page = 0; page < 10; ++page) {
///         task.publish(render(page));      // throws task_cancelled once the task is cancelled
///         task.progress((page + 1) / 10.0, "rendering");
///       }
///       return render_summary();
///     });
class task_context {
public:
  task_context(const task_context&) = delete;
  task_context& operator=(const task_context&) = delete;

  const std::string& id() const noexcept { return record_.id; }
  /// Stop is requested by cancel(), a replacing submit, cancel_group(), cancel_all() and shutdown(cancel).
  std::stop_token stop_token() const noexcept { return record_.stop_token(); }
  bool stop_requested() const noexcept { return record_.cancel_requested(); }
  /// Throws task_cancelled when stop was requested.
  void throw_if_cancelled() const {
    if (!stop_requested()) return;
    detail::scrub_fiber_stack();
    throw task_cancelled();
  }

  /// Makes `value` the task's latest value (what get_result() shows) and bumps the sequence. `value` is an R, or
  /// text for an R made from std::string, or a number for an arithmetic R; anything else throws
  /// result_type_mismatch. Throws task_cancelled once stop was requested.
  template <class T>
  void publish(T&& value);

  /// Reports progress: `fraction` in [0, 1] (else invalid_argument) and a message; bumps the sequence.
  void progress(double fraction, std::string_view message = {}) { record_.set_progress(fraction, message); }

private:
  friend class detail::task_core;
  friend struct detail::task_access;
  explicit task_context(detail::task_record& record) noexcept : record_(record) {}
  [[noreturn]] TETHER_DECL void publish_mismatch(const std::type_info& published) const;

  detail::task_record& record_;
};

namespace detail {
/// How the task manager's internals reach a task_context's record.
struct task_access {
  static task_record& record(task_context& task) noexcept { return task.record_; }
};
}  // namespace detail

/// The submitter's view of one submission. Copies share the task; a handle may outlive the manager (get() and
/// wait() still work; cancel() then reports already_finished).
/// **Thread safety:** every member from any thread.
template <class R>
class task_handle {
public:
  /// Waits for the end; returns the value, rethrows what the task threw, or throws task_cancelled. In a task of
  /// a task manager, waiting suspends only that task's fiber. A task waiting for itself throws would_deadlock.
  /// For a move-only R, the value is moved out: get() then works once.
  R get();
  void wait() {
    detail::refuse_self_wait(*record_, "tether::task_handle::wait");
    record_->done.wait();
  }
  /// Waits at most `timeout`; returns the status then (final when the task ended).
  template <class Rep, class Period>
  task_status wait_for(std::chrono::duration<Rep, Period> timeout) {
    detail::refuse_self_wait(*record_, "tether::task_handle::wait_for");
    record_->done.wait_for(timeout);
    return record_->current_status();
  }
  cancel_outcome cancel() {
    if (record_->has_ended()) return cancel_outcome::already_finished;
    return core_->cancel(*record_, task_end::cancelled_by_user);
  }
  const std::string& id() const { return record_->id; }
  task_status status() const noexcept { return record_->current_status(); }

private:
  friend class task_manager;
  task_handle(detail::ref<detail::typed_record<R>> record, detail::task_core* core) noexcept
      : record_(std::move(record)), core_(core) {}

  detail::ref<detail::typed_record<R>> record_;
  detail::task_core* core_;
};

/// Runs tasks on a shared pool of worker threads. Each task runs as a Boost.Fiber on one worker and stays there;
/// a task that waits (this_task::sleep_for, a task_handle, affine_executor::call) gives the worker to other tasks.
/// A task that blocks in an OS call (file or socket I/O, std::mutex, std::this_thread::sleep_for) blocks its worker.
///
/// Tasks have ids: submit(id, fn) replaces (or rejects) a live task with the same id, get_result(id) polls its
/// latest value, status and progress, cancel(id) cancels it. Groups (e.g. one per user session) share the pool by
/// weighted round-robin. Submitting never blocks; bounds make it throw queue_full instead. Finished results are
/// kept for retain_for and at most max_retained; then the id reads as expired, later as unknown.
/// **Thread safety:** every member from any thread, also from its own tasks (except shutdown and destruction).
///
///     tether::task_manager tasks;
///     auto handle = tasks.submit("sum", [] { return 1 + 2; }, {.group = "session-42"});
///     int three = handle.get();
///     auto polled = tasks.get_result<int>("sum");  // status, value, progress, timestamps...
class task_manager {
public:
  struct options {
    unsigned workers = 0;                        ///< 0: std::thread::hardware_concurrency()
    std::size_t max_queued = 1'000'000;          ///< queued (not running) tasks; 0: unlimited
    std::size_t max_queued_per_group = 0;        ///< 0: unlimited
    std::chrono::seconds retain_for{600};        ///< finished results, then the ids of evicted ones (as expired)
    std::size_t max_retained = 100'000;          ///< finished results kept at most
    std::size_t stack_size = 128 * 1024;         ///< bytes of stack per fiber
    /// While a worker is busy, one sleeping worker looks at the queue this often instead of being woken by every
    /// submit: a task waits at most this long behind another's long task. Each look is a timer wake-up (a poll of
    /// 1 µs cost about a quarter of a core). 0: every submit that finds no worker awake to take it wakes one (about
    /// 10 µs of the submitter's time per wake on the machines we measured).
    std::chrono::microseconds standby_poll{1'000};
  };

  TETHER_DECL task_manager();
  TETHER_DECL explicit task_manager(options opts);
  task_manager(const task_manager&) = delete;
  task_manager& operator=(const task_manager&) = delete;
  /// shutdown(cancel): queued tasks are cancelled, running ones asked to stop and waited for; the workers are
  /// joined. Destroying the manager from one of its own tasks terminates the program (it would wait for itself).
  TETHER_DECL ~task_manager();

  /// Queues `fn` (taking a task_context& or nothing) under `id`, with the caller's tether::context. Never blocks.
  /// Throws invalid_argument (empty id, weight 0), duplicate_task (on_duplicate::reject), queue_full, and
  /// executor_stopped after shutdown().
  template <class Fn>
    requires std::is_invocable_v<std::decay_t<Fn>, task_context&> || std::is_invocable_v<std::decay_t<Fn>>
  auto submit(std::string id, Fn&& fn, task_options opts = {});

  /// The task's state and latest value; nullopt when the id is unknown or expired. Throws result_type_mismatch
  /// when the task does not return R.
  template <class R>
  std::optional<task_result<R>> get_result(std::string_view id) const;

  /// The untyped view; `known` tells an unknown id from an expired one.
  TETHER_DECL task_info info(std::string_view id) const;
  /// The known tasks of `group`; all of them for an empty group.
  TETHER_DECL std::vector<task_info> list(std::string_view group = {}) const;

  TETHER_DECL cancel_outcome cancel(std::string_view id);
  /// Cancels every queued task of the group and asks its running ones to stop; returns how many.
  TETHER_DECL std::size_t cancel_group(std::string_view group);
  TETHER_DECL std::size_t cancel_all();

  /// Waits at most `timeout` for the task's end; returns its status then. Throws unknown_task or expired_task.
  template <class Rep, class Period>
  task_status wait(std::string_view id, std::chrono::duration<Rep, Period> timeout);

  /// Stops accepting tasks, then drains or cancels what is queued and running, waits for it, and joins the
  /// workers. Later calls return the first report. Throws would_deadlock from one of this manager's tasks.
  TETHER_DECL shutdown_report shutdown(shutdown_mode mode = shutdown_mode::drain);

  unsigned workers() const noexcept { return core_->worker_count(); }

private:
  TETHER_DECL detail::ref<detail::task_record> find_or_throw(std::string_view id, std::string_view api) const;

  std::unique_ptr<detail::task_core> core_;
};

// ---- definitions ---------------------------------------------------------------------------------------------

namespace detail {
TETHER_DECL void raise_result_mismatch(const task_record& task, const std::type_info& asked, std::string_view api);
}

template <class T>
void task_context::publish(T&& value) {
  throw_if_cancelled();
  using D = std::remove_cvref_t<T>;
  bool ok = false;
  if constexpr (std::is_arithmetic_v<D>) {
    D copy = value;
    ok = record_.publish_same(typeid(D), &copy) || record_.publish_number(static_cast<long double>(value));
  } else if constexpr (std::is_array_v<D>) {
    ok = record_.publish_text(std::string_view(value));  // a string literal or char array
  } else {
    D copy(std::forward<T>(value));
    ok = record_.publish_same(typeid(D), &copy);
    if constexpr (std::is_convertible_v<const D&, std::string_view>)
      if (!ok) ok = record_.publish_text(std::string_view(copy));
  }
  if (!ok) publish_mismatch(typeid(D));
}

template <class R>
R task_handle<R>::get() {
  detail::refuse_self_wait(*record_, "tether::task_handle::get");
  record_->done.wait();
  if (record_->current_status() != task_status::succeeded) detail::scrub_fiber_stack();
  switch (record_->current_status()) {
    case task_status::succeeded:
      if constexpr (std::is_void_v<R>) return;
      else return record_->value_for_get();
    case task_status::failed: std::rethrow_exception(record_->stored_error());
    default: throw task_cancelled();
  }
}

template <class Fn>
  requires std::is_invocable_v<std::decay_t<Fn>, task_context&> || std::is_invocable_v<std::decay_t<Fn>>
auto task_manager::submit(std::string id, Fn&& fn, task_options opts) {
  using F = std::decay_t<Fn>;
  using R = typename detail::task_return<F>::type;
  static_assert(std::is_void_v<R> || (std::is_object_v<R> && !std::is_const_v<R> && !std::is_array_v<R>),
                "a task must return void or a non-const object type (not a reference or an array)");
  // The id's slot in the registry is most likely not in the cache: ask for it now, so that it comes in while the
  // record is made.
  const std::uint64_t hash = detail::name_hash(id);
  core_->prefetch(hash);
  detail::ref<detail::typed_record<R>> record = detail::make_ref<detail::task_body<R, F>>(
      std::forward<Fn>(fn), std::move(id), hash, std::move(opts.group), opts.weight, context::current());
  core_->submit(*record, opts.duplicate);
  return task_handle<R>(std::move(record), core_.get());
}

template <class R>
std::optional<task_result<R>> task_manager::get_result(std::string_view id) const {
  const detail::task_registry::found found = core_->find(id);
  if (!found.record) return std::nullopt;
  if (found.record->result_type() != typeid(R))
    detail::raise_result_mismatch(*found.record, typeid(R), "tether::task_manager::get_result");
  std::optional<task_result<R>> out(std::in_place);
  static_cast<const detail::typed_record<R>&>(*found.record).snapshot(*out);
  return out;
}

template <class Rep, class Period>
task_status task_manager::wait(std::string_view id, std::chrono::duration<Rep, Period> timeout) {
  const detail::ref<detail::task_record> record = find_or_throw(id, "tether::task_manager::wait");
  detail::refuse_self_wait(*record, "tether::task_manager::wait");
  record->done.wait_for(timeout);
  return record->current_status();
}

}  // namespace tether::inline v1

// this_task:: goes with every task manager; its definitions need the classes above.
#include <tether/this_task.hpp>

#if TETHER_HEADER_ONLY
#  include <tether/impl/task_manager.ipp>
#endif
