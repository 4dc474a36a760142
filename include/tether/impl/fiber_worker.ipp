// SPDX-License-Identifier: BSL-1.0
// Out-of-line definitions for detail/fiber_worker.hpp.
#pragma once

#include <tether/detail/fiber_worker.hpp>

#include <boost/fiber/fiber.hpp>
#include <boost/fiber/operations.hpp>

#include <algorithm>
#include <cassert>
#include <memory>

#if defined(__SANITIZE_ADDRESS__)
#  include <sanitizer/asan_interface.h>
#endif

namespace tether::inline v1::detail {

TETHER_DECL fiber_worker*& current_worker_slot() noexcept {
  static thread_local fiber_worker* worker = nullptr;
  return worker;
}

// ---- stacks --------------------------------------------------------------------------------------------------

TETHER_DECL stack_pool::~stack_pool() {
  for (boost::context::stack_context& stack : free_) make_.deallocate(stack);
}

TETHER_DECL boost::context::stack_context stack_pool::allocate() {
  if (free_.empty()) return make_.allocate();
  boost::context::stack_context stack = free_.back();
  free_.pop_back();
  return stack;
}

TETHER_DECL void stack_pool::deallocate(boost::context::stack_context& stack) noexcept {
  if (free_.size() < max_free) {
    try {
      free_.push_back(stack);
      return;
    } catch (...) {  // out of memory for the list: free the stack instead
    }
  }
  make_.deallocate(stack);
}

// ---- the algorithm -------------------------------------------------------------------------------------------

TETHER_DECL fiber_scheduler::fiber_scheduler(fiber_worker& worker) noexcept : worker_(worker) {
  worker_.scheduler_ = this;
}

TETHER_DECL void fiber_scheduler::awakened(boost::fibers::context* fiber, fiber_props& props) noexcept {
  if (fiber->is_context(boost::fibers::type::dispatcher_context)) {
    worker_.dispatcher_ = fiber;
    return;
  }
  if (worker_.spawning_) props.runner = true;  // a new runner is scheduled from within spawn_runner()
  worker_.make_ready(fiber);
}

TETHER_DECL boost::fibers::context* fiber_scheduler::pick_next() noexcept {
  boost::fibers::context* next = worker_.choose_next();
  worker_.switch_context(boost::fibers::context::active(), next);
  return next;
}

TETHER_DECL bool fiber_scheduler::has_ready_fibers() const noexcept {
  return !worker_.ready_.empty() || worker_.dispatcher_ != nullptr;
}

TETHER_DECL void fiber_scheduler::suspend_until(std::chrono::steady_clock::time_point const& until) noexcept {
  worker_.idle_until(until);
}

TETHER_DECL void fiber_scheduler::notify() noexcept { worker_.unpark(); }

TETHER_DECL fiber_props& fiber_scheduler::props_of(boost::fibers::context* fiber) noexcept {
  if (!get_properties(fiber)) set_properties(fiber, new_properties(fiber));
  return properties(fiber);
}

// ---- the worker ----------------------------------------------------------------------------------------------

TETHER_DECL fiber_worker::fiber_worker(task_source& source, idle_workers& idle, unsigned index,
                                       std::size_t stack_size)
    : source_(source), pool_idle_(idle), index_(index), stacks_(stack_size) {}

TETHER_DECL void fiber_worker::start() {
  thread_ = std::thread([this] { thread_main(); });
}

TETHER_DECL void fiber_worker::thread_main() noexcept {
  current_worker_slot() = this;
  boost::fibers::use_scheduling_algorithm<fiber_scheduler>(*this);
  fiber_blocker_slot() = this;
  spawn_runner();
  stop_.wait();  // the main fiber sleeps here while the runners work
  exiting_ = true;
  for (fiber* idle : idle_) make_ready(idle);
  idle_.clear();
  while (runners_ != 0) boost::this_fiber::yield();
  fiber_blocker_slot() = nullptr;
  current_worker_slot() = nullptr;
  active_props_ = nullptr;  // Boost switches by itself from here on
  // Leaving the thread destroys Boost's scheduler, which runs the dispatcher until the last fiber is released.
}

TETHER_DECL void fiber_worker::spawn_runner() {
  ++runners_;
  ++free_runners_;
  spawning_ = true;
  boost::fibers::fiber runner(std::allocator_arg, pooled_stack{&stacks_}, [this] { runner_main(); });
  spawning_ = false;
  runner.detach();
}

TETHER_DECL void fiber_worker::runner_main() noexcept {
  fiber* self = fiber::active();
#if defined(__SANITIZE_ADDRESS__)
  // Boost keeps its own records at the top of the stack, above this frame: 8 KiB covers them with room to spare.
  char anchor = 0;
  scheduler_->props_of(self).stack_low = &anchor - stacks_.stack_size() + 8192;
#endif
  bool called = true;  // just started, or resumed because a task is queued
  while (!exiting_) {
    poll();
    // After a task, others that became ready go first; a runner called for work takes it at once.
    if (called || ready_.empty()) {
      called = false;
      --free_runners_;
      const bool ran = source_.run_one(*this);
      ++free_runners_;
      if (ran) continue;
    }
    if (idle_.size() >= max_idle_runners) break;
    if (park_in_runner()) {
      called = true;
      continue;
    }
    idle_.push_back(self);
    self->suspend();
    called = true;
  }
  --runners_;
  --free_runners_;
}

/// The worker's last busy runner, out of work, sleeps on the parker itself rather than through Boost's dispatcher,
/// when nothing else may need the thread: every other runner is idle, no fiber is ready, and no fiber but ours has
/// run here (one might sleep in Boost's own timer queue, which only the dispatcher serves). Woken, it goes straight
/// to the next task: the way back through the dispatcher cost about 1.4 µs after a sleep, most of it cache and TLB
/// misses. True when a task is queued; false when the runner must go the usual way.
TETHER_DECL bool fiber_worker::park_in_runner() noexcept {
  for (;;) {
    if (foreign_fibers_ || exiting_ || idle_.size() + 1 != runners_ || !ready_.empty() || !timers_.empty() ||
        inbox_pending_.load(std::memory_order_acquire))
      return false;
    idle_until(steady_clock::time_point::max());
    if (source_.has_work()) return true;
    // Woken for something else (a wake from another thread, Boost's notify()): the dispatcher sorts it out. A
    // standby's poll that found nothing just sleeps again.
    if (!stood_by_) return false;
  }
}

TETHER_DECL fiber_worker::fiber* fiber_worker::choose_next() noexcept {
  poll();
  if (!ready_.empty()) {
    auto at = ready_.begin();
    // Never the caller itself. A fiber whose sleep ends, or whose wake comes, while it is still switching away is
    // ready again before it has left the thread (the poll above found it), and Boost cannot resume the running
    // fiber: it stays ready, and another fiber or the dispatcher runs first.
    if (&*at == fiber::active() && ++at == ready_.end()) return std::exchange(dispatcher_, nullptr);
    fiber* next = &*at;
    ready_.erase(at);
    // A submit that saw us spinning left its task to us; we run this fiber first, so hand the task on.
    if (!exiting_ && source_.has_work()) source_.wake_idle_worker();
    return next;
  }
  if (!idle_.empty() && !exiting_ && source_.has_work()) {
    // Never the caller itself: a runner that just went idle is still the active fiber.
    if (idle_.back() == fiber::active()) {
      if (idle_.size() == 1) return std::exchange(dispatcher_, nullptr);
      std::swap(idle_.back(), idle_[idle_.size() - 2]);
    }
    fiber* next = idle_.back();
    idle_.pop_back();
    return next;
  }
  return std::exchange(dispatcher_, nullptr);
}

TETHER_DECL void fiber_worker::switch_context(fiber* from, fiber* to) noexcept {
  // Save first, so that from == to (a lone yield) comes out right; the dispatcher (to == nullptr) runs empty.
  fiber_props& left = scheduler_->props_of(from);
  left.saved = exchange_current(tether::context());
  if (!foreign_fibers_ && is_foreign(from, left)) foreign_fibers_ = true;
  if (!to) {
    active_props_ = nullptr;
    return;
  }
  fiber_props& entered = scheduler_->props_of(to);
  if (!foreign_fibers_ && is_foreign(to, entered)) foreign_fibers_ = true;
  exchange_current(std::move(entered.saved));
  active_props_ = &entered;
}

TETHER_DECL void fiber_worker::poll() noexcept {
  if (inbox_pending_.load(std::memory_order_acquire)) drain_inbox();
  if (!timers_.empty()) fire_timers(steady_clock::now());
}

TETHER_DECL void fiber_worker::drain_inbox() noexcept {
  {
    std::lock_guard lock(inbox_mutex_);
    inbox_.swap(inbox_scratch_);
    inbox_pending_.store(false, std::memory_order_relaxed);  // partner: the mutex
  }
  for (waiter* w : inbox_scratch_) deliver(*w);
  inbox_scratch_.clear();
}

TETHER_DECL void fiber_worker::fire_timers(steady_clock::time_point now) noexcept {
  while (!timers_.empty() && timers_.begin()->first <= now) {
    sleeper* s = timers_.begin()->second;
    timers_.erase(timers_.begin());
    s->fired = true;
    if (s->w->blocked) {
      s->w->blocked = false;
      make_ready(static_cast<fiber*>(s->w->agent));
    }
  }
}

TETHER_DECL void fiber_worker::deliver(waiter& w) noexcept {
  // A wake for a fiber that already resumed on its deadline is remembered for its next block_until().
  w.woken = true;
  if (!w.blocked) return;
  w.blocked = false;
  make_ready(static_cast<fiber*>(w.agent));
}

TETHER_DECL void fiber_worker::idle_until(steady_clock::time_point until) noexcept {
  if (exiting_ && runners_ == 0) return;  // Boost is tearing the scheduler down
  if (!timers_.empty()) until = std::min(until, timers_.begin()->first);
  // A standby that found nothing goes back to sleep at once: spinning every standby_poll would cost more than it
  // saves.
  if (!std::exchange(stood_by_, false) && spin_until(until)) return;
  // Announce the sleep before the last look for work: a submit either sees the flag or we see its task.
  sleeping_.store(true, std::memory_order_seq_cst);
  pool_idle_.newest_sleeper.store(index_, std::memory_order_relaxed);  // only a hint for wake_one()
  const unsigned asleep = pool_idle_.sleeping.fetch_add(1, std::memory_order_seq_cst) + 1;
  // While another worker is awake, stand by for it (if nobody does yet): see idle_workers.
  unsigned none = 0;
  const bool standby = asleep < pool_idle_.workers && pool_idle_.standby_poll.count() != 0 &&
                       pool_idle_.standby.compare_exchange_strong(none, 1, std::memory_order_seq_cst);
  const auto parked_at = steady_clock::now();
  // Compared in its own unit before it is added: a poll of centuries would overflow the clock's nanoseconds.
  const bool poll_first =
      standby && pool_idle_.standby_poll < std::chrono::duration_cast<std::chrono::microseconds>(until - parked_at);
  const auto deadline = poll_first ? parked_at + pool_idle_.standby_poll : until;
  const bool woken = !something_to_do() && parker_.park_until(deadline, std::chrono::nanoseconds::zero());
  // seq_cst, before the next look at the queue (the dispatcher's): a submit that saw us stand by left its task
  // to us.
  if (standby) pool_idle_.standby.store(0, std::memory_order_seq_cst);
  pool_idle_.sleeping.fetch_sub(1, std::memory_order_seq_cst);
  // relaxed: a claim that raced with our wake-up leaves a token, which only shortens the next park.
  sleeping_.store(false, std::memory_order_relaxed);
  if (woken) spin_.parked(true, steady_clock::now() - parked_at);  // a timer's deadline says nothing of the queue
  else stood_by_ = standby;
}

/// Spins until there is something to do or `until`, if no other worker of the manager is spinning; true when
/// there is something to do. While we spin, submitters signal nobody: we watch the queue ourselves.
TETHER_DECL bool fiber_worker::spin_until(steady_clock::time_point until) noexcept {
  if (pool_idle_.spinning.fetch_add(1, std::memory_order_seq_cst) != 0) {
    // seq_cst, as below: a submit may have seen our increment and left its task to the spinner.
    pool_idle_.spinning.fetch_sub(1, std::memory_order_seq_cst);
    return false;
  }
  // Polite: the spin yields the CPU every few dozen looks. A worker that ran out of work in a flood of small tasks
  // may share its CPU with the very thread that submits them; spinning there kept the submitter off the CPU, so the
  // queue stayed empty and the spin ran to its end, again and again. One run in a few fell into that, at a third of
  // the usual throughput and five to ten times the context switches; none did with the yield.
  const bool found = spin_for([this] { return something_to_do(); }, spin_.window(), until, true);
  // seq_cst, paired with wake_one(): a submit that saw us spinning left its task to us, so look once more after
  // giving the role up. Either we see its task, or it sees that nobody spins and wakes a sleeper.
  pool_idle_.spinning.fetch_sub(1, std::memory_order_seq_cst);
  return found || something_to_do();
}

/// A task is queued, a fiber was woken from another thread, or the worker is to stop (which also comes through
/// the inbox). seq_cst loads: see the protocols above.
TETHER_DECL bool fiber_worker::something_to_do() const noexcept {
  return inbox_pending_.load(std::memory_order_seq_cst) || (!exiting_ && source_.has_work());
}

TETHER_DECL fiber_props& fiber_worker::active_props() noexcept {
  fiber_props* known = active_props_;
  assert(!known || known == &scheduler_->props_of(fiber::active()));
  return known ? *known : scheduler_->props_of(fiber::active());
}

TETHER_DECL task_context* fiber_worker::current_task() noexcept { return active_props().task; }

TETHER_DECL void fiber_worker::set_current_task(task_context* task) noexcept { active_props().task = task; }

TETHER_DECL char* fiber_worker::current_stack_low() noexcept { return active_props().stack_low; }

#if defined(__SANITIZE_ADDRESS__)
TETHER_DECL void scrub_fiber_stack() noexcept {
  fiber_worker* worker = fiber_worker::current();
  if (!worker) return;
  char* low = worker->current_stack_low();
  char* here = static_cast<char*>(__builtin_frame_address(0));
  // Everything below this frame is dead: no live object can be poisoned wrongly by clearing it.
  if (low && here > low) __asan_unpoison_memory_region(low, static_cast<std::size_t>(here - low));
}
#endif

TETHER_DECL void fiber_worker::yield_to_others() {
  poll();
  if (free_runners_ == 0 && source_.has_work()) spawn_runner();
  boost::this_fiber::yield();
}

// ---- blocker -------------------------------------------------------------------------------------------------

TETHER_DECL void fiber_worker::prepare(waiter& w) noexcept {
  w.owner = this;
  w.agent = fiber::active();
}

TETHER_DECL bool fiber_worker::block_until(waiter& w, steady_clock::time_point deadline) noexcept {
  const bool timed = deadline != steady_clock::time_point::max();
  if (!w.woken && timed && deadline <= steady_clock::now()) return false;
  if (!w.woken) {
    fiber* self = static_cast<fiber*>(w.agent);
    // Keep one runner free, so that queued tasks still start while this one waits.
    if (free_runners_ == 0 && scheduler_->props_of(self).runner) spawn_runner();
    sleeper s{&w};
    if (timed) s.at = timers_.emplace(deadline, &s);
    w.blocked = true;
    self->suspend();
    if (timed && !s.fired) timers_.erase(s.at);
  }
  const bool woken = w.woken;
  w.woken = false;
  return woken;
}

TETHER_DECL void fiber_worker::wake(waiter& w) noexcept {
  if (current_worker_slot() == this) {  // from one of our own fibers: no hand-off needed
    deliver(w);
    return;
  }
  // Unpark under the lock: once the worker can see the entry, this thread no longer touches the worker, which may
  // then be destroyed as soon as the woken task ends.
  std::lock_guard lock(inbox_mutex_);
  inbox_.push_back(&w);
  inbox_pending_.store(true, std::memory_order_release);
  parker_.unpark();
}

}  // namespace tether::inline v1::detail
