// SPDX-License-Identifier: BSL-1.0
// One task manager worker thread: its own Boost.Fiber scheduling algorithm, fiber blocker, timers and stacks.
#pragma once

#include <tether/config.hpp>
#include <tether/context.hpp>
#include <tether/detail/parker.hpp>
#include <tether/detail/wait.hpp>

#include <boost/context/fixedsize_stack.hpp>
#include <boost/context/stack_context.hpp>
#include <boost/fiber/algo/algorithm.hpp>
#include <boost/fiber/context.hpp>
#include <boost/fiber/properties.hpp>
#include <boost/fiber/scheduler.hpp>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <map>
#include <mutex>
#include <thread>
#include <vector>

namespace tether::inline v1 {

class task_context;

namespace detail {

class fiber_worker;

/// What a worker keeps per fiber.
struct fiber_props final : boost::fibers::fiber_properties {
  using fiber_properties::fiber_properties;
  tether::context saved;         ///< the fiber's tether context while another fiber has the thread
  task_context* task = nullptr;  ///< the task the fiber runs now, for this_task::
  bool runner = false;           ///< a fiber that takes tasks from the manager
  char* stack_low = nullptr;     ///< AddressSanitizer builds: about the lowest address of a runner's stack
};

/// Fiber stacks from malloc (so AddressSanitizer sees overflows), reused: a worker makes a fiber only when every
/// one it has is blocked, and gives stacks back when it has too many idle fibers.
/// **Thread safety:** none; one worker thread.
class stack_pool {
public:
  explicit stack_pool(std::size_t stack_size) noexcept : size_(stack_size), make_(stack_size) {}
  std::size_t stack_size() const noexcept { return size_; }
  stack_pool(const stack_pool&) = delete;
  stack_pool& operator=(const stack_pool&) = delete;
  TETHER_DECL ~stack_pool();
  TETHER_DECL boost::context::stack_context allocate();
  TETHER_DECL void deallocate(boost::context::stack_context& stack) noexcept;

private:
  // Sanitizer builds do not reuse stacks: AddressSanitizer may keep stale poison on a dead fiber's frames.
  static constexpr std::size_t max_free = TETHER_SANITIZED ? 0 : 64;
  std::size_t size_;
  boost::context::fixedsize_stack make_;
  std::vector<boost::context::stack_context> free_;
};

/// The StackAllocator Boost.Fiber copies into each fiber: a pointer to the worker's pool.
struct pooled_stack {
  stack_pool* pool;
  boost::context::stack_context allocate() { return pool->allocate(); }
  void deallocate(boost::context::stack_context& stack) noexcept { pool->deallocate(stack); }
};

/// What the workers of one manager tell submitters about themselves. At most one idle worker spins, watching the
/// queue: while one does, a submit needs to signal nobody. At most one sleeping worker stands by while another is
/// awake: it sleeps for standby_poll at a time and then looks at the queue. While it does, a submit needs to signal
/// nobody either: the awake worker looks at the queue when its task ends, and if that task is long, the standby
/// takes the new one within standby_poll. Otherwise (or with a standby_poll of 0) a submit wakes a sleeping worker.
///
/// The standby is what lets a busy pool run without wake-ups: a futex wake costs the waker about 10 µs here, and
/// waking a second worker for every task that the first one would take a microsecond later made a pool of two
/// workers slower than a pool of one.
/// **Thread safety:** atomics; see fiber_worker::idle_until() and task_core::wake_one() for the protocol.
struct idle_workers {
  idle_workers(unsigned worker_count, std::chrono::microseconds poll) noexcept
      : workers(worker_count), standby_poll(poll) {}
  alignas(64) std::atomic<unsigned> spinning{0};  ///< 0 or 1, but for a moment while two race for the role
  std::atomic<unsigned> sleeping{0};              ///< workers that announced a sleep and can be claimed
  std::atomic<unsigned> standby{0};               ///< 0 or 1: a sleeper that looks at the queue every standby_poll
  /// The index of the worker that went to sleep last: a submit wakes it first, since its memory is the most likely
  /// to be in the cache still (waking the workers in turn cost about 0.9 µs more per wake-up).
  std::atomic<unsigned> newest_sleeper{0};
  const unsigned workers;
  /// How long a task may wait behind another worker's long task while the standby sleeps; 0: no standby.
  const std::chrono::microseconds standby_poll;
};

/// Where a worker gets its tasks: the task manager.
/// **Thread safety:** has_work() from any thread; run_one() on the worker's fibers.
class task_source {
public:
  /// True when a task is queued (a hint: seq_cst, paired with the worker's sleep check).
  virtual bool has_work() const noexcept = 0;
  /// Takes a task and runs it to its end on the calling fiber, then more while worker.take_another() says so;
  /// false when none was queued.
  virtual bool run_one(fiber_worker& worker) noexcept = 0;
  /// A task is queued that the calling worker does not take now (it runs other fibers first): wake an idle worker
  /// for it, if one sleeps and none spins.
  virtual void wake_idle_worker() noexcept = 0;

protected:
  ~task_source() = default;
};

/// The Boost.Fiber algorithm of one worker thread: it only forwards to the worker, which keeps the state.
/// **Thread safety:** the worker thread only (notify() from any thread).
class fiber_scheduler final : public boost::fibers::algo::algorithm_with_properties<fiber_props> {
public:
  TETHER_DECL explicit fiber_scheduler(fiber_worker& worker) noexcept;
  TETHER_DECL void awakened(boost::fibers::context* fiber, fiber_props& props) noexcept override;
  TETHER_DECL boost::fibers::context* pick_next() noexcept override;
  TETHER_DECL bool has_ready_fibers() const noexcept override;
  TETHER_DECL void suspend_until(std::chrono::steady_clock::time_point const& until) noexcept override;
  TETHER_DECL void notify() noexcept override;

  /// The fiber's properties; the main and dispatcher fibers get theirs on first use.
  TETHER_DECL fiber_props& props_of(boost::fibers::context* fiber) noexcept;

private:
  fiber_worker& worker_;
};

/// One worker thread of the task manager. Tasks run on "runner" fibers that take one task after another; a task
/// that blocks (through detail::event, which this worker serves as the fiber blocker) suspends only its fiber, and
/// the worker starts another runner when none is free. Fibers never leave the thread; everything that crosses
/// threads is a std::mutex (the wake inbox), atomics, or the futex parker the idle thread sleeps on.
///
/// A runner takes a new task only when no other fiber is ready, so a busy worker does not hoard tasks that an idle
/// worker could run, and a woken task does not wait behind new ones.
/// **Thread safety:** start/stop/join from the owning manager; wake(), claim_sleeper() and unpark() from any
/// thread; everything else on the worker thread.
class fiber_worker final : public blocker {
public:
  /// `index`: the worker's place among its manager's workers.
  TETHER_DECL fiber_worker(task_source& source, idle_workers& idle, unsigned index, std::size_t stack_size);
  fiber_worker(const fiber_worker&) = delete;
  fiber_worker& operator=(const fiber_worker&) = delete;
  ~fiber_worker() { join(); }

  /// Starts the thread.
  TETHER_DECL void start();
  /// Asks the thread to end; call it once no task is queued or running.
  void stop() noexcept { stop_.set(); }
  void join() {
    if (thread_.joinable()) thread_.join();
  }

  /// Takes this worker's "I am going to sleep" flag; true when it was set, and the caller must unpark().
  bool claim_sleeper() noexcept {
    bool expected = true;
    return sleeping_.compare_exchange_strong(expected, false, std::memory_order_seq_cst);
  }
  void unpark() noexcept { parker_.unpark(); }

  /// The worker running the calling thread, or nullptr.
  static fiber_worker* current() noexcept;
  const task_source& source() const noexcept { return source_; }

  /// The task of the running fiber, or nullptr (worker thread only).
  TETHER_DECL task_context* current_task() noexcept;
  TETHER_DECL void set_current_task(task_context* task) noexcept;
  /// The running fiber's stack_low, or nullptr.
  TETHER_DECL char* current_stack_low() noexcept;

  /// Between two tasks of a runner: true when it may take the next task at once, false when other fibers became
  /// ready (they go first) or the worker is ending.
  bool take_another() noexcept {
    poll();
    return ready_.empty() && !exiting_;
  }

  /// this_task::yield(): lets ready fibers, and a newly queued task, run before the caller goes on.
  TETHER_DECL void yield_to_others();

  // blocker: suspends the calling fiber; wake() may come from any thread.
  TETHER_DECL void prepare(waiter& w) noexcept override;
  TETHER_DECL bool block_until(waiter& w, steady_clock::time_point deadline) noexcept override;
  TETHER_DECL void wake(waiter& w) noexcept override;

private:
  friend class fiber_scheduler;
  using fiber = boost::fibers::context;

  /// A fiber blocked with a deadline; lives on that fiber's stack.
  struct sleeper;
  using timer_map = std::multimap<steady_clock::time_point, sleeper*>;
  struct sleeper {
    waiter* w;
    bool fired = false;
    timer_map::iterator at{};
  };

  /// Idle runners beyond this many end, giving their stacks back.
  static constexpr std::size_t max_idle_runners = 8;

  TETHER_DECL void thread_main() noexcept;
  TETHER_DECL void runner_main() noexcept;
  TETHER_DECL void spawn_runner();
  TETHER_DECL void poll() noexcept;
  TETHER_DECL void drain_inbox() noexcept;
  TETHER_DECL void fire_timers(steady_clock::time_point now) noexcept;
  TETHER_DECL void deliver(waiter& w) noexcept;
  TETHER_DECL fiber* choose_next() noexcept;
  TETHER_DECL void switch_context(fiber* from, fiber* to) noexcept;
  TETHER_DECL fiber_props& active_props() noexcept;
  TETHER_DECL void idle_until(steady_clock::time_point until) noexcept;
  TETHER_DECL bool park_in_runner() noexcept;
  /// A fiber that a task made (Boost's worker fibers that are not runners).
  static bool is_foreign(fiber* f, const fiber_props& props) noexcept {
    return f->is_context(boost::fibers::type::worker_context) && !props.runner;
  }
  TETHER_DECL bool spin_until(steady_clock::time_point until) noexcept;
  TETHER_DECL bool something_to_do() const noexcept;
  void make_ready(fiber* f) noexcept { f->ready_link(ready_); }

  task_source& source_;
  idle_workers& pool_idle_;  // shared by the manager's workers
  const unsigned index_;
  std::thread thread_;
  parker parker_;
  std::atomic<bool> sleeping_{false};
  event stop_;

  // Wakes from any thread.
  std::mutex inbox_mutex_;
  std::vector<waiter*> inbox_;
  std::atomic<bool> inbox_pending_{false};

  // Worker thread only.
  fiber_scheduler* scheduler_ = nullptr;
  boost::fibers::scheduler::ready_queue_type ready_;
  fiber* dispatcher_ = nullptr;  // Boost's dispatcher fiber, kept apart: it runs only when nothing else can
  // The properties of the fiber that pick_next() switched to; nullptr when Boost runs its dispatcher or switches
  // without asking us (at the start and the end of the thread). Saves asking Boost for the running fiber and its
  // properties at each task's start and end: calls into libboost_fiber whose lines are cold after an idle spell
  // (about 0.7 µs per task submitted to a sleeping pool).
  fiber_props* active_props_ = nullptr;
  std::vector<fiber*> idle_;     // runners waiting for a task
  std::vector<waiter*> inbox_scratch_;
  timer_map timers_;
  std::size_t runners_ = 0;       // runner fibers alive
  std::size_t free_runners_ = 0;  // runners not running a task: idle, or started and not yet in one
  bool exiting_ = false;
  bool stood_by_ = false;        // the last park was a standby's that ran out
  bool spawning_ = false;        // inside spawn_runner(): the fiber Boost schedules now is a runner
  bool foreign_fibers_ = false;  // a fiber not ours ran here once: the runners always sleep through the dispatcher
  adaptive_spin spin_;  // how long this worker spins when it is the spinner
  stack_pool stacks_;
};

/// The worker running the calling thread, or nullptr: one slot per thread, set by the worker.
TETHER_DECL fiber_worker*& current_worker_slot() noexcept;

inline fiber_worker* fiber_worker::current() noexcept { return current_worker_slot(); }

}  // namespace detail
}  // namespace tether::inline v1

#if TETHER_HEADER_ONLY
#  include <tether/impl/fiber_worker.ipp>
#endif
