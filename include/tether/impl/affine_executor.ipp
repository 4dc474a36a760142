// SPDX-License-Identifier: BSL-1.0
// Out-of-line definitions for affine_executor.hpp.
#pragma once

#include <tether/affine_executor.hpp>
#include <tether/impl/affine_graph.ipp>

#include <fmt/format.h>

#include <algorithm>
#include <cstdio>
#include <new>
#include <thread>
#include <vector>

#include <sys/eventfd.h>
#include <pthread.h>
#include <unistd.h>

namespace tether::inline v1 {

// ---- construction and lifecycle ----------------------------------------------------------------------------------

TETHER_DECL affine_executor::affine_executor(std::string name) : affine_executor(std::move(name), 0, 0) {}

TETHER_DECL affine_executor::affine_executor(std::string name, detail::thread_token owner, pid_t owner_tid) {
  if (name.empty())
    detail::raise(errc::invalid_argument, "tether::affine_executor::affine_executor: the name '{}' is empty", name);
  node_ = std::make_shared<detail::affine_node>(std::move(name), owner, owner_tid);
}

TETHER_DECL affine_executor::~affine_executor() {
  stop();
  // A producer whose function stop() just abandoned may still be signalling; its last touch is the count.
  while (producers_.load(std::memory_order_acquire) != 0) std::this_thread::yield();
  const int fd = fd_.load(std::memory_order_acquire);
  if (fd >= 0) ::close(fd);
}

TETHER_DECL void affine_executor::stop() noexcept {
  phase_.store(phase_stopped, std::memory_order_seq_cst);
  close_and_wake();
  // Every accepted function the owner has not taken yet fails its waiter here, on this thread; none runs here.
  while (detail::affine_job* job = take_one()) job->abandon(name());
}

TETHER_DECL void affine_executor::drain() {
  std::uint8_t expected = phase_running;
  phase_.compare_exchange_strong(expected, phase_draining, std::memory_order_seq_cst);
  close_and_wake();
  if (!on_owner_thread()) return;  // the owner's run*/poll finishes the backlog
  owner_scope scope(*this);
  while (run_next(detail::steady_clock::time_point::max()) == step::ran) {
  }
}

TETHER_DECL bool affine_executor::stopped() const noexcept {
  return phase_.load(std::memory_order_acquire) == phase_stopped;
}

TETHER_DECL bool affine_executor::on_owner_thread() const noexcept {
  return node_->owner.load(std::memory_order_acquire) == detail::current_thread();
}

TETHER_DECL void affine_executor::close_and_wake() noexcept {
  inbox_.close();
  parker_.unpark();
  signal_fd();
}

TETHER_DECL void affine_executor::raise_stopped(const char* api) const {
  const bool draining = phase_.load(std::memory_order_acquire) == phase_draining;
  detail::raise(errc::executor_stopped, "tether::affine_executor::{}: executor '{}' is {}", api, name(),
                draining ? "draining and takes no new work" : "stopped");
}

TETHER_DECL void affine_executor::check_open(const char* api) const {
  if (stopped()) raise_stopped(api);
}

// ---- producers ---------------------------------------------------------------------------------------------------

TETHER_DECL void affine_executor::accept(detail::affine_job* job, const char* api) {
  // Counted while inside: the destructor waits until no producer touches the executor any more. The count drops
  // last, also when raise_stopped() throws (the message is formatted before the guard unwinds).
  struct inside {
    std::atomic<std::uint32_t>& count;
    explicit inside(std::atomic<std::uint32_t>& c) : count(c) { count.fetch_add(1, std::memory_order_seq_cst); }
    ~inside() { count.fetch_sub(1, std::memory_order_release); }  // release: pairs with the destructor's acquire
  } guard(producers_);
  // One step: either the job is in before the close, and a stop() finds it, or the close came first.
  const detail::affine_inbox::pushed result = inbox_.push(job);
  if (result == detail::affine_inbox::pushed::closed) raise_stopped(api);
  // The push itself cleared the owner's "needs a signal" flag, so exactly one producer signals per wait, and only
  // after its job is in: a woken owner finds it at once.
  if (result == detail::affine_inbox::pushed::ok_wake_owner) {
    parker_.unpark();
    signal_fd();
  }
}

// ---- the owner thread --------------------------------------------------------------------------------------------

TETHER_DECL void affine_executor::claim_owner(const char* api) {
  const detail::thread_token me = detail::current_thread();
  detail::thread_token owner = node_->owner.load(std::memory_order_acquire);
  if (owner == me) return;
  if (owner == 0 && node_->owner.compare_exchange_strong(owner, me, std::memory_order_acq_rel)) {
    node_->owner_tid.store(detail::current_tid(), std::memory_order_relaxed);  // relaxed: for messages only
    detail::mark_affine_owner();
    return;
  }
  detail::raise(errc::invalid_argument,
                "tether::affine_executor::{}: executor '{}' belongs to thread {}, not to the calling thread {}", api,
                name(), node_->owner_tid.load(std::memory_order_relaxed), detail::current_tid());
}

TETHER_DECL std::size_t affine_executor::run() {
  claim_owner("run");
  owner_scope scope(*this);
  std::size_t ran = 0;
  while (run_next(detail::steady_clock::time_point::max()) == step::ran) ++ran;
  return ran;
}

TETHER_DECL std::size_t affine_executor::run_one() {
  claim_owner("run_one");
  owner_scope scope(*this);
  return run_next(detail::steady_clock::time_point::max()) == step::ran ? 1 : 0;
}

TETHER_DECL std::size_t affine_executor::poll() {
  claim_owner("poll");
  owner_scope scope(*this);
  // Only what is pending now: producers that keep posting cannot keep poll() from returning.
  std::size_t ran = 0;
  for (std::size_t budget = inbox_.refill(); budget > 0; --budget) {
    detail::affine_job* job = inbox_.take(false);
    if (!job) break;  // a function run here ran a nested loop that took the rest
    if (execute(job)) ++ran;
  }
  closed_and_empty();
  return ran;
}

TETHER_DECL affine_executor::step affine_executor::run_next(detail::steady_clock::time_point deadline) {
  for (;;) {
    if (detail::affine_job* job = take_one()) {
      if (execute(job)) return step::ran;
      continue;
    }
    if (closed_and_empty()) return step::stopped;
    if (!idle_wait(deadline)) return step::idle;
  }
}

TETHER_DECL bool affine_executor::closed_and_empty() noexcept {
  // A function accepted before the close must not be left behind by a drain.
  if (!inbox_.closed_and_empty()) return false;
  std::uint8_t draining = phase_draining;
  phase_.compare_exchange_strong(draining, phase_stopped, std::memory_order_acq_rel);
  return true;
}

TETHER_DECL detail::affine_job* affine_executor::take_one() noexcept { return inbox_.take(); }

TETHER_DECL bool affine_executor::execute(detail::affine_job* job) noexcept {
  if (phase_.load(std::memory_order_acquire) == phase_stopped) {
    job->abandon(name());
    return false;
  }
  std::exception_ptr escaped;
  const bool ran = job->run(escaped);
  if (escaped) report(std::move(escaped));
  return ran;
}

TETHER_DECL bool affine_executor::idle_wait(detail::steady_clock::time_point deadline) noexcept {
  using detail::steady_clock;
  // Spin first: a function posted within the window is taken with no syscall on either side. pending() is a
  // hint; take_one() orders us after the producer. Work, or a close.
  if (detail::spin_for([this] { return inbox_.pending(); }, idle_spin_.window(), deadline, false)) return true;
  const auto parked_at = steady_clock::now();
  if (parked_at >= deadline) return false;
  clear_fd();
  if (!inbox_.try_sleep()) return true;
  const bool woken = parker_.park_until(deadline, std::chrono::nanoseconds::zero());
  inbox_.wake_up();
  const auto now = steady_clock::now();
  idle_spin_.parked(woken, now - parked_at);
  return woken || now < deadline;
}

TETHER_DECL void affine_executor::enter() noexcept {
  // While the flag is clear producers skip the signal; the owner looks at the inbox by itself.
  if (depth_++ == 0) inbox_.wake_up();
}

TETHER_DECL void affine_executor::leave() noexcept {
  if (--depth_ != 0) return;
  clear_fd();
  // Work that came after the last look was not signalled by its producer (the flag was clear): signal it here, so
  // that a loop waiting on wakeup_fd() comes back for it.
  if (inbox_.sleep_or_signal()) signal_fd();
}

// ---- wakeup_fd ---------------------------------------------------------------------------------------------------

TETHER_DECL int affine_executor::wakeup_fd() const noexcept {
  int fd = fd_.load(std::memory_order_acquire);
  if (fd >= 0) return fd;
  const int made = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (made < 0) return -1;
  if (!fd_.compare_exchange_strong(fd, made, std::memory_order_seq_cst)) {
    ::close(made);  // another thread made one first
    return fd;
  }
  // seq_cst, paired with the producers' push: those that looked for the fd before it existed signalled
  // nobody, so stand in for them when anything is pending (or the executor closed).
  if (inbox_.anything_pending()) signal_fd();
  return made;
}

TETHER_DECL void affine_executor::signal_fd() const noexcept {
  const int fd = fd_.load(std::memory_order_seq_cst);
  if (fd < 0) return;
  const std::uint64_t one = 1;
  [[maybe_unused]] const ssize_t written = ::write(fd, &one, sizeof one);  // only fails if the count overflows
}

TETHER_DECL void affine_executor::clear_fd() const noexcept {
  const int fd = fd_.load(std::memory_order_acquire);
  if (fd < 0) return;
  std::uint64_t count = 0;
  [[maybe_unused]] const ssize_t got = ::read(fd, &count, sizeof count);  // EAGAIN when it was clear already
}

// ---- errors from posted functions --------------------------------------------------------------------------------

namespace detail::affine_impl {
inline std::string describe(const std::exception_ptr& escaped) {
  try {
    std::rethrow_exception(escaped);
  } catch (const std::exception& e) {
    return e.what();
  } catch (...) {
    return "an exception not derived from std::exception";
  }
}
}  // namespace detail::affine_impl

TETHER_DECL void affine_executor::set_error_handler(std::function<void(std::exception_ptr)> handler) {
  std::lock_guard lock(handler_mutex_);
  handler_ = std::move(handler);
}

TETHER_DECL void affine_executor::report(std::exception_ptr escaped) noexcept {
  try {
    std::function<void(std::exception_ptr)> handler;
    {
      std::lock_guard lock(handler_mutex_);
      handler = handler_;
    }
    if (handler) return handler(std::move(escaped));
    fmt::print(stderr, "tether::affine_executor: a function posted to executor '{}' threw: {}\n", name(),
               detail::affine_impl::describe(escaped));
  } catch (...) {
    std::fprintf(stderr, "tether::affine_executor: the error handler of executor '%s' threw; exception dropped\n",
                 name().c_str());
  }
}

// ---- main_thread() -----------------------------------------------------------------------------------------------

TETHER_DECL TETHER_VISIBLE affine_executor& main_thread() {
  // Built in place and never destroyed; stopped at exit, so a thread that calls it late gets executor_stopped
  // instead of a dead object. Its owner is the main thread, or after a fork() the thread that forked: its handlers
  // below hand it over. Either way that thread's kernel id is the process id.
  alignas(affine_executor) static unsigned char storage[sizeof(affine_executor)];
  static affine_executor* const instance =
      new (storage) affine_executor(std::string("main_thread"), detail::main_thread_token(), ::getpid());
  static const struct stop_at_exit {
    ~stop_at_exit() { instance->stop(); }
  } stopper;
  static const bool fork_safe =
      ::pthread_atfork(&affine_executor::lock_main_for_fork, &affine_executor::unlock_main_in_parent,
                       &affine_executor::hand_main_to_child) == 0;
  (void)fork_safe;
  return *instance;
}

TETHER_DECL void affine_executor::lock_main_for_fork() noexcept { main_thread().inbox_.lock_for_fork(); }

TETHER_DECL void affine_executor::unlock_main_in_parent() noexcept { main_thread().inbox_.unlock_after_fork(); }

TETHER_DECL void affine_executor::hand_main_to_child() noexcept {
  affine_executor& main = main_thread();
  main.node_->owner.store(detail::current_thread(), std::memory_order_release);  // the token it had in the parent
  main.node_->owner_tid.store(::getpid(), std::memory_order_relaxed);  // relaxed: for messages only
  detail::mark_affine_owner();
  main.inbox_.unlock_after_fork();
}

}  // namespace tether::inline v1
