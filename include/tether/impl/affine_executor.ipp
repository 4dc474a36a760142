// SPDX-License-Identifier: BSL-1.0
// Out-of-line definitions for affine_executor.hpp and detail/affine_graph.hpp.
#pragma once

#include <tether/affine_executor.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <cstdio>
#include <new>
#include <thread>
#include <vector>

#include <sys/eventfd.h>
#include <unistd.h>

namespace tether::inline v1 {

// ---- the wait-for graph ----------------------------------------------------------------------------------------

namespace detail {

namespace affine_impl {
/// -1: not known yet; 0: this thread owns no executor; 1: it owns one, or is the main thread.
inline TETHER_VISIBLE signed char& owner_flag() noexcept {
  static thread_local signed char flag = -1;
  return flag;
}

/// Depth first from `from`: true when owners waiting on executors lead back to a node that `me` owns. `path`
/// receives the executors along the way. The graph never holds a cycle (each edge is checked as it is added), so
/// the search ends; `budget` bounds it all the same.
inline bool leads_to(const affine_graph& graph, const affine_node* from, pid_t me,
                     std::vector<const affine_node*>& path, std::size_t budget) {
  path.push_back(from);
  const pid_t owner = from->owner.load(std::memory_order_acquire);
  if (owner == me) return true;
  if (owner != 0 && path.size() <= budget) {
    const auto [first, last] = graph.waits.equal_range(owner);
    for (auto it = first; it != last; ++it)
      if (leads_to(graph, it->second.second.get(), me, path, budget)) return true;
  }
  path.pop_back();
  return false;
}

/// "'b' belongs to thread 13, which waits on 'a', which belongs to this thread (12)".
inline std::string describe_cycle(const std::vector<const affine_node*>& path, pid_t me) {
  std::string text;
  for (std::size_t i = 0; i + 1 < path.size(); ++i)
    text += fmt::format("'{}' belongs to thread {}, which waits on ", path[i]->name,
                        path[i]->owner.load(std::memory_order_relaxed));  // relaxed: for the message only
  text += fmt::format("'{}', which belongs to this thread ({})", path.back()->name, me);
  return text;
}
}  // namespace affine_impl

TETHER_DECL pid_t current_tid() noexcept {
  static thread_local const pid_t tid = ::gettid();
  return tid;
}

TETHER_DECL TETHER_VISIBLE bool may_own_affine_executor() noexcept {
  signed char& flag = affine_impl::owner_flag();
  if (flag < 0) flag = current_tid() == ::getpid() ? 1 : 0;  // the main thread owns main_thread()
  return flag > 0;
}

TETHER_DECL TETHER_VISIBLE void mark_affine_owner() noexcept { affine_impl::owner_flag() = 1; }

TETHER_DECL TETHER_VISIBLE affine_graph& affine_wait_graph() noexcept {
  static affine_graph* const graph = new affine_graph;  // never destroyed: waits may end during exit
  return *graph;
}

TETHER_DECL void affine_wait_edge::publish(const std::shared_ptr<const affine_node>& target, const char* api) {
  affine_graph& graph = affine_wait_graph();
  const pid_t me = current_tid();
  std::lock_guard lock(graph.mutex);
  // Publish, then look. Under the lock the two are one step, so of two owners calling into each other at the same
  // moment the second always finds the first one's edge.
  const std::uint64_t token = graph.next_token++;
  const auto entry = graph.waits.emplace(me, std::pair{token, target});
  std::vector<const affine_node*> path;
  if (affine_impl::leads_to(graph, target.get(), me, path, graph.waits.size() + 1)) {
    graph.waits.erase(entry);
    raise(errc::would_deadlock, "tether::affine_executor::{}: waiting on executor '{}' would deadlock: {}", api,
          target->name, affine_impl::describe_cycle(path, me));
  }
  tid_ = me;
  token_ = token;
}

TETHER_DECL void affine_wait_edge::withdraw() noexcept {
  affine_graph& graph = affine_wait_graph();
  std::lock_guard lock(graph.mutex);
  const auto [first, last] = graph.waits.equal_range(tid_);
  for (auto it = first; it != last; ++it)
    if (it->second.first == token_) {
      graph.waits.erase(it);
      return;
    }
}

}  // namespace detail

// ---- construction and lifecycle ----------------------------------------------------------------------------------

TETHER_DECL affine_executor::affine_executor(std::string name) : affine_executor(std::move(name), 0) {}

TETHER_DECL affine_executor::affine_executor(std::string name, pid_t owner) {
  if (name.empty())
    detail::raise(errc::invalid_argument, "tether::affine_executor::affine_executor: the name '{}' is empty", name);
  node_ = std::make_shared<detail::affine_node>(std::move(name), owner);
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
  return node_->owner.load(std::memory_order_acquire) == detail::current_tid();
}

TETHER_DECL void affine_executor::close_and_wake() noexcept {
  state_.fetch_or(closed_bit, std::memory_order_seq_cst);
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
  // Reserve a place first, so a stop() that follows waits for this enqueue instead of missing it.
  std::uint64_t old = state_.load(std::memory_order_relaxed);
  do {
    if (old & closed_bit) raise_stopped(api);
  } while (!state_.compare_exchange_weak(old, old + one_job, std::memory_order_seq_cst, std::memory_order_relaxed));
  // enqueue fails only when memory for a new block cannot be had; the reservation must be honoured all the same.
  while (!queue_.enqueue(job)) std::this_thread::yield();
  // Signal after the enqueue: a woken owner finds the function at once. (Signalling first made an owner that
  // preempted its producer on a busy core spin for a function that was not there, for a whole scheduler tick.)
  if ((old & sleeping_bit) && (state_.fetch_and(~sleeping_bit, std::memory_order_seq_cst) & sleeping_bit)) {
    parker_.unpark();
    signal_fd();
  }
}

// ---- the owner thread --------------------------------------------------------------------------------------------

TETHER_DECL void affine_executor::claim_owner(const char* api) {
  const pid_t me = detail::current_tid();
  pid_t owner = node_->owner.load(std::memory_order_acquire);
  if (owner == me) return;
  if (owner == 0 && node_->owner.compare_exchange_strong(owner, me, std::memory_order_acq_rel)) {
    detail::mark_affine_owner();
    return;
  }
  detail::raise(errc::invalid_argument,
                "tether::affine_executor::{}: executor '{}' belongs to thread {}, not to the calling thread {}", api,
                name(), owner, me);
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
  std::size_t budget = state_.load(std::memory_order_acquire) / one_job;
  std::size_t ran = 0;
  for (; budget > 0; --budget) {
    detail::affine_job* job = take_one();
    if (!job) break;
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
  // One load for both: a function accepted before the close must not be left behind by a drain.
  const std::uint64_t state = state_.load(std::memory_order_acquire);
  if (!(state & closed_bit) || state >= one_job) return false;
  std::uint8_t draining = phase_draining;
  phase_.compare_exchange_strong(draining, phase_stopped, std::memory_order_acq_rel);
  return true;
}

TETHER_DECL detail::affine_job* affine_executor::take_one() noexcept {
  std::uint64_t old = state_.load(std::memory_order_relaxed);
  do {
    if (old < one_job) return nullptr;
    // acquire: pairs with the producer's reservation; the job itself arrives through the queue's own ordering.
  } while (!state_.compare_exchange_weak(old, old - one_job, std::memory_order_acquire, std::memory_order_relaxed));
  // The claim guarantees a job is in the queue or about to be (its producer is between reservation and enqueue).
  detail::affine_job* job = nullptr;
  for (unsigned tries = 0; !queue_.try_dequeue(job); ++tries) {
    if (tries < 256) detail::spin_pause();
    else std::this_thread::yield();
  }
  return job;
}

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
  // Spin first: a function posted within the window is taken with no syscall on either side.
  const auto spin_end = std::min(deadline, steady_clock::now() + detail::parker::default_spin);
  // relaxed: a hint; take_one()'s CAS orders us after the producer. Any bit but sleeping: work, or closed.
  const auto pending = [this] { return (state_.load(std::memory_order_relaxed) & ~sleeping_bit) != 0; };
  if (detail::spin_until(pending, spin_end, false)) return true;
  if (steady_clock::now() >= deadline) return false;
  clear_fd();
  // seq_cst: the bit and a producer's reservation are in one word, so exactly one of us sees the other.
  if (state_.fetch_or(sleeping_bit, std::memory_order_seq_cst) & ~sleeping_bit) {
    state_.fetch_and(~sleeping_bit, std::memory_order_relaxed);
    return true;
  }
  const bool woken = parker_.park_until(deadline, std::chrono::nanoseconds::zero());
  state_.fetch_and(~sleeping_bit, std::memory_order_relaxed);  // relaxed: producers only skip a needless signal
  return woken || steady_clock::now() < deadline;
}

TETHER_DECL void affine_executor::enter() noexcept {
  // relaxed: while the bit is clear producers skip the signal; the owner reads the queue state by itself.
  if (depth_++ == 0) state_.fetch_and(~sleeping_bit, std::memory_order_relaxed);
}

TETHER_DECL void affine_executor::leave() noexcept {
  if (--depth_ != 0) return;
  clear_fd();
  const std::uint64_t old = state_.fetch_or(sleeping_bit, std::memory_order_seq_cst);
  // Work that came after the last look was not signalled by its producer (the bit was clear): signal it here, so
  // that a loop waiting on wakeup_fd() comes back for it.
  if (old >= one_job && (state_.fetch_and(~sleeping_bit, std::memory_order_seq_cst) & sleeping_bit)) signal_fd();
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
  // seq_cst, paired with the producers' reservation: those that looked for the fd before it existed signalled
  // nobody, so stand in for them when anything is pending (or the executor closed).
  if (state_.load(std::memory_order_seq_cst) & ~sleeping_bit) signal_fd();
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
  // instead of a dead object. The main thread's kernel id is the process id.
  alignas(affine_executor) static unsigned char storage[sizeof(affine_executor)];
  static affine_executor* const instance = new (storage) affine_executor(std::string("main_thread"), ::getpid());
  static const struct stop_at_exit {
    ~stop_at_exit() { instance->stop(); }
  } stopper;
  return *instance;
}

}  // namespace tether::inline v1
