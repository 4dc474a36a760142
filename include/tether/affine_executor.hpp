// SPDX-License-Identifier: BSL-1.0
// Thread affinity: work from any thread runs on one owner thread (tether::main_thread() for the process's main).
#pragma once

#include <tether/config.hpp>
#include <tether/context.hpp>
#include <tether/detail/affine_graph.hpp>
#include <tether/detail/affine_inbox.hpp>
#include <tether/detail/affine_jobs.hpp>
#include <tether/detail/parker.hpp>
#include <tether/detail/wait.hpp>
#include <tether/error.hpp>

#include <fmt/chrono.h>

#include <atomic>
#include <chrono>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <type_traits>
#include <utility>

namespace tether::inline v1 {

class affine_executor;

/// The process-wide executor for the process's main thread (the thread whose id is the process id), which owns it
/// from the start: `main_thread().call(f)` made on main runs `f` inline even before main runs the loop. One object
/// per process, also across shared objects built header-only with -fvisibility=hidden. It is never destroyed: at
/// exit it is stopped, so late callers get executor_stopped and waiting ones abandoned, never a dangling object.
TETHER_DECL TETHER_VISIBLE affine_executor& main_thread();

namespace detail {
/// What call(fn) and friends return: the result of invoking the stored (decayed) function once, as an rvalue.
template <class Fn>
using affine_result_t = std::invoke_result_t<std::decay_t<Fn>>;

/// Functions an affine executor accepts: invocable with no arguments once, after being moved into the queue.
template <class Fn>
concept affine_function = std::move_constructible<std::decay_t<Fn>> && std::invocable<std::decay_t<Fn>>;
}  // namespace detail

/// Runs work posted from any thread on its one owner thread, in FIFO order per producing thread.
///
/// For runtimes that only one thread may call (CPython, Julia, Lua, OpenGL, a GUI toolkit): other threads hand them
/// work and get the value or the exception back. The owner is the first thread that calls one of `run*()`/`poll()`
/// (main_thread() belongs to the main thread from the start); nothing ever runs on another thread, neither before
/// the owner is known nor during stop() or destruction. Each function runs under the tether::context its submitter
/// had, so owner-thread code knows which session it serves.
///
///     tether::affine_executor gui("gui");
///     std::thread worker([&] { int n = gui.call([] { return widget_count(); }); });   // runs on the gui thread
///     gui.run();                                                                        // until gui.stop()
///
/// - `call` from the owner thread runs inline; a blocking call that would close a cycle of owner threads waiting
///   on each other throws errc::would_deadlock instead of hanging.
/// - `call_for` bounds the wait for the start: a call that timed out is withdrawn and never starts later; one that
///   the owner had already started is waited for to the end.
/// - stop() rejects new work (errc::executor_stopped) and fails every accepted, not yet started function with
///   errc::abandoned; drain() runs the backlog first. Waiters never hang, not even when the executor is destroyed.
/// - Waiting is fiber-aware: called from a tether task, `call` suspends that task's fiber, not its worker thread.
///
/// **Thread safety:** post, submit, call, call_for, stop, drain, stopped, on_owner_thread, wakeup_fd,
/// set_error_handler and name from any thread; run, run_one, poll, run_for and run_until from the owner thread
/// only (another thread gets errc::invalid_argument). Destroying it while other threads are blocked in call() or
/// call_for() is allowed (they get abandoned); starting a call concurrently with destruction is not.
class affine_executor {
public:
  /// An executor called "affine_executor" in messages.
  affine_executor() : affine_executor(std::string("affine_executor")) {}
  /// `name` appears in every message about this executor ("main_thread", "gui", "python").
  TETHER_DECL explicit affine_executor(std::string name);
  /// stop(): pending functions are abandoned (their waiters get errc::abandoned), none is run.
  TETHER_DECL ~affine_executor();
  affine_executor(const affine_executor&) = delete;
  affine_executor& operator=(const affine_executor&) = delete;

  // ---- producers: any thread -------------------------------------------------------------------------------------

  /// Queues `fn` to run on the owner thread and returns at once. What `fn` throws goes to the error handler.
  /// Throws executor_stopped after stop() or drain().
  template <class Fn>
    requires detail::affine_function<Fn>
  void post(Fn&& fn);

  /// Queues `fn` and returns a future for its value or exception; errc::abandoned if it never runs. Never runs
  /// inline: waiting on the future from the owner thread would deadlock (use call() there).
  template <class Fn>
    requires detail::affine_function<Fn>
  [[nodiscard]] auto submit(Fn&& fn) -> std::future<detail::affine_result_t<Fn>>;

  /// Runs `fn` on the owner thread and returns its value, or rethrows its exception. On the owner thread it runs
  /// inline. Throws executor_stopped, abandoned (stopped before `fn` started) or would_deadlock.
  template <class Fn>
    requires detail::affine_function<Fn>
  auto call(Fn&& fn) -> detail::affine_result_t<Fn>;

  /// call() that gives up when `fn` has not started within `timeout`: throws errc::timeout, and `fn` then never
  /// runs. Once started, `fn` is waited for until it returns, whatever the timeout.
  template <class Rep, class Period, class Fn>
    requires detail::affine_function<Fn>
  auto call_for(std::chrono::duration<Rep, Period> timeout, Fn&& fn) -> detail::affine_result_t<Fn>;

  // ---- the owner thread ----------------------------------------------------------------------------------------
  // Each returns how many functions it ran, and claims the executor for the calling thread if nobody owns it yet.

  /// Runs functions until stop() (or until drain() has emptied the queue). Idle, it spins for at most 20 µs, then
  /// sleeps; the window shrinks to 1 µs while work arrives less often than that, so an idle owner costs no CPU.
  TETHER_DECL std::size_t run();
  /// Waits for one function and runs it; 0 when stopped first.
  TETHER_DECL std::size_t run_one();
  /// Runs the functions that are pending now (not those posted meanwhile) and never blocks; for a loop that
  /// waits on wakeup_fd().
  TETHER_DECL std::size_t poll();
  /// run() for at most `duration`.
  template <class Rep, class Period>
  std::size_t run_for(std::chrono::duration<Rep, Period> duration);
  /// Runs functions until `pred()` is true, or stopped. `pred` is checked before the first function, after each
  /// one, and at least every `run_until_recheck` while idle, so a condition that turns true without a post is
  /// noticed too (post a no-op to make that immediate).
  template <class Pred>
    requires std::predicate<Pred&>
  std::size_t run_until(Pred pred);

  /// While idle, run_until() re-checks its predicate this often.
  static constexpr std::chrono::milliseconds run_until_recheck{10};

  // ---- lifecycle and state: any thread -------------------------------------------------------------------------

  /// Rejects new work with executor_stopped and fails every pending function's waiter with abandoned (posted
  /// functions are dropped unrun). A run* loop returns after the function it is running, if any; at most that one
  /// function starts after stop() has returned. Idempotent.
  TETHER_DECL void stop() noexcept;
  /// Rejects new work, runs what was accepted, then stops. On the owner thread it runs the backlog before returning;
  /// from another thread it returns at once and the owner's run*/poll finishes the backlog.
  TETHER_DECL void drain();
  /// True once stopped: after stop(), or after drain() once the backlog has run.
  TETHER_DECL bool stopped() const noexcept;
  /// True only on the owner thread; false everywhere while no thread owns the executor yet.
  TETHER_DECL bool on_owner_thread() const noexcept;
  /// An eventfd that is readable whenever work is pending, to drive the executor from another event loop: wait for
  /// POLLIN, then call poll(). The executor reads it; users only wait on it. Also signalled by stop() and drain().
  /// It may stay readable briefly after the work is gone, until the next poll(). Created on the first call; -1 if
  /// the system has no file descriptor to spare.
  TETHER_DECL int wakeup_fd() const noexcept;
  /// Receives what escapes a posted function, on the owner thread; an empty function restores the default, which
  /// prints the exception and the executor's name to stderr. The loop always goes on.
  TETHER_DECL void set_error_handler(std::function<void(std::exception_ptr)> handler);
  /// The name given at construction.
  const std::string& name() const noexcept { return node_->name; }

private:
  friend affine_executor& main_thread();
  /// fork() handlers of main_thread(): its inbox's lock is held across the fork (see affine_inbox), and in the
  /// child the thread that forked, the only one there, owns it.
  TETHER_DECL static void lock_main_for_fork() noexcept;
  TETHER_DECL static void unlock_main_in_parent() noexcept;
  TETHER_DECL static void hand_main_to_child() noexcept;
  enum class step { ran, idle, stopped };

  /// The owner inside run*/poll: producers need not signal it while it looks at the queue.
  struct owner_scope {
    explicit owner_scope(affine_executor& ex) noexcept : ex_(ex) { ex_.enter(); }
    ~owner_scope() { ex_.leave(); }
    owner_scope(const owner_scope&) = delete;
    owner_scope& operator=(const owner_scope&) = delete;
    affine_executor& ex_;
  };

  TETHER_DECL affine_executor(std::string name, detail::thread_token owner, pid_t owner_tid);

  TETHER_DECL void accept(detail::affine_job* job, const char* api);
  TETHER_DECL void check_open(const char* api) const;
  [[noreturn]] TETHER_DECL void raise_stopped(const char* api) const;
  TETHER_DECL bool closed_and_empty() noexcept;
  TETHER_DECL void claim_owner(const char* api);
  TETHER_DECL step run_next(detail::steady_clock::time_point deadline);
  TETHER_DECL bool idle_wait(detail::steady_clock::time_point deadline) noexcept;
  TETHER_DECL detail::affine_job* take_one() noexcept;
  TETHER_DECL bool execute(detail::affine_job* job) noexcept;
  TETHER_DECL void enter() noexcept;
  TETHER_DECL void leave() noexcept;
  TETHER_DECL void close_and_wake() noexcept;
  TETHER_DECL void signal_fd() const noexcept;
  TETHER_DECL void clear_fd() const noexcept;
  TETHER_DECL void report(std::exception_ptr escaped) noexcept;

  template <class Fn>
  auto call_until(Fn&& fn, detail::steady_clock::time_point deadline, const char* api)
      -> std::pair<bool, detail::affine_call_ptr<std::decay_t<Fn>, detail::affine_result_t<Fn>>>;

  enum : std::uint8_t { phase_running, phase_draining, phase_stopped };

  std::shared_ptr<detail::affine_node> node_;
  detail::affine_inbox inbox_;
  // Its own cache line: touched by producers alone (the owner polls the inbox).
  alignas(64) std::atomic<std::uint32_t> producers_{0};  // threads inside accept(); the destructor waits for none
  std::atomic<std::uint8_t> phase_{phase_running};
  detail::parker parker_;
  mutable std::atomic<int> fd_{-1};
  int depth_ = 0;  // owner thread only: nesting of run*/poll (a function may run a nested loop)
  detail::adaptive_spin idle_spin_;  // owner thread only
  mutable std::mutex handler_mutex_;
  std::function<void(std::exception_ptr)> handler_;
};

// ---- templates ---------------------------------------------------------------------------------------------------

template <class Fn>
  requires detail::affine_function<Fn>
void affine_executor::post(Fn&& fn) {
  std::unique_ptr<detail::affine_post_job<std::decay_t<Fn>>> job(
      new detail::affine_post_job<std::decay_t<Fn>>(detail::capture(std::forward<Fn>(fn))));
  accept(job.get(), "post");
  job.release();  // the queue owns it now
}

template <class Fn>
  requires detail::affine_function<Fn>
auto affine_executor::submit(Fn&& fn) -> std::future<detail::affine_result_t<Fn>> {
  using job_type = detail::affine_submit_job<std::decay_t<Fn>, detail::affine_result_t<Fn>>;
  std::unique_ptr<job_type> job(new job_type(detail::capture(std::forward<Fn>(fn))));
  auto future = job->future();
  accept(job.get(), "submit");
  job.release();
  return future;
}

/// Queues a blocking call and waits for it until `deadline`; first: an outcome is there (else it was withdrawn).
template <class Fn>
auto affine_executor::call_until(Fn&& fn, detail::steady_clock::time_point deadline, const char* api)
    -> std::pair<bool, detail::affine_call_ptr<std::decay_t<Fn>, detail::affine_result_t<Fn>>> {
  using job_type = detail::affine_call_job<std::decay_t<Fn>, detail::affine_result_t<Fn>>;
  detail::affine_wait_edge edge(node_, api);  // before queueing: a call that would deadlock is never queued
  detail::affine_call_ptr<std::decay_t<Fn>, detail::affine_result_t<Fn>> job(
      new job_type(detail::capture(std::forward<Fn>(fn))));
  try {
    accept(job.get(), api);
  } catch (...) {
    job->release();  // the queue's reference: it was never queued
    throw;
  }
  // From here on `this` may be destroyed by another thread (which abandons the job): only the job is touched.
  const bool done = job->wait_until(deadline);
  return {done, std::move(job)};
}

template <class Fn>
  requires detail::affine_function<Fn>
auto affine_executor::call(Fn&& fn) -> detail::affine_result_t<Fn> {
  if (on_owner_thread()) {
    check_open("call");
    return std::invoke(std::decay_t<Fn>(std::forward<Fn>(fn)));
  }
  return call_until(std::forward<Fn>(fn), detail::steady_clock::time_point::max(), "call").second->take();
}

template <class Rep, class Period, class Fn>
  requires detail::affine_function<Fn>
auto affine_executor::call_for(std::chrono::duration<Rep, Period> timeout, Fn&& fn) -> detail::affine_result_t<Fn> {
  if (on_owner_thread()) {
    check_open("call_for");
    return std::invoke(std::decay_t<Fn>(std::forward<Fn>(fn)));
  }
  const std::shared_ptr<const detail::affine_node> node = node_;  // for the message, should `this` be gone by then
  auto [done, job] = call_until(std::forward<Fn>(fn), detail::deadline_after(timeout), "call_for");
  if (!done)
    detail::raise(errc::timeout, "tether::affine_executor::call_for: executor '{}' did not start the call within {}",
                  node->name, timeout);
  return job->take();
}

template <class Rep, class Period>
std::size_t affine_executor::run_for(std::chrono::duration<Rep, Period> duration) {
  claim_owner("run_for");
  const auto deadline = detail::deadline_after(duration);
  owner_scope scope(*this);
  std::size_t ran = 0;
  while (run_next(deadline) == step::ran) ++ran;
  return ran;
}

template <class Pred>
  requires std::predicate<Pred&>
std::size_t affine_executor::run_until(Pred pred) {
  claim_owner("run_until");
  owner_scope scope(*this);
  std::size_t ran = 0;
  while (!pred()) {
    const step s = run_next(detail::deadline_after(run_until_recheck));
    if (s == step::stopped) break;
    if (s == step::ran) ++ran;
  }
  return ran;
}

}  // namespace tether::inline v1

#if TETHER_HEADER_ONLY
#  include <tether/impl/affine_executor.ipp>
#endif
