// SPDX-License-Identifier: BSL-1.0
// The task manager's queue: tasks by group, handed to workers by weighted round-robin, with bounds.
#pragma once

#include <tether/config.hpp>
#include <tether/detail/name_hash.hpp>
#include <tether/detail/ref_counted.hpp>
#include <tether/detail/spin_lock.hpp>
#include <tether/detail/task_record.hpp>

#include <atomic>
#include <cstddef>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace tether::inline v1::detail {

/// An intrusive FIFO of task records through their prev/next links; a record is in at most one list.
/// **Thread safety:** none; the fair queue's mutex guards it.
class task_list {
public:
  bool empty() const noexcept { return head_ == nullptr; }
  task_record* front() const noexcept { return head_; }

  void push_back(task_record& r) noexcept {
    r.prev = tail_;
    r.next = nullptr;
    if (tail_) tail_->next = &r;
    else head_ = &r;
    tail_ = &r;
  }

  void erase(task_record& r) noexcept {
    if (r.prev) r.prev->next = r.next;
    else head_ = r.next;
    if (r.next) r.next->prev = r.prev;
    else tail_ = r.prev;
    r.prev = r.next = nullptr;
  }

private:
  task_record* head_ = nullptr;
  task_record* tail_ = nullptr;
};

/// One group's tasks: the queued ones in order, and the running ones (for cancel_group and shutdown).
struct queue_group {
  explicit queue_group(std::string group_name) : name(std::move(group_name)) {}
  const std::string name;
  task_list queued, running;
  std::size_t queued_count = 0, running_count = 0;
  unsigned weight = 1;
  unsigned credit = 0;                 // turns left in the current round
  queue_group* ring_prev = nullptr;    // in the ring exactly while the group has queued tasks
  queue_group* ring_next = nullptr;
};

/// Bounds on queued (not yet running) tasks; 0 means unlimited.
struct queue_limits {
  std::size_t max_queued = 0;
  std::size_t max_queued_per_group = 0;
};

/// The tasks waiting for a worker. Groups with queued tasks form a ring; pop() serves the group whose turn it is,
/// and a group of weight w keeps the turn for w tasks in a row, so a group that queued a thousand tasks does not
/// starve one that queued a single task. A group that gets work joins at the end of the ring. Removing a queued
/// task (cancel) is O(1). The queue keeps one reference to each queued record, from push() until remove(), or
/// until pop() hands it to the worker; a running record is listed (under the lock) but kept alive by its worker,
/// which lets go of it only after finish().
///
/// Most pushes do not take the lock: they put the task on the intake, a lock-free stack, and whoever takes the lock
/// next files what the intake holds into the groups, oldest first. A push then touches its own lines, the intake's and
/// the count's, not the groups' and the lock's, which the workers hold most of the time. That is what counts when the
/// host runs the two vCPUs far apart and a line that crosses costs 300-450 ns (docs/task_manager.md has figures). A
/// push that replaces a live task takes the lock, and so does every push while max_queued_per_group is set (its
/// count is per group). A task whose group is new and cannot be made for want of memory waits, parked, until it can,
/// and so do the tasks pushed after it (meanwhile the workers find work counted that they cannot take, and spin);
/// close() puts a mark at the intake's head, so that a push either lands before it or is refused.
/// **Thread safety:** every member from any thread (one lock, and the intake's head; queued() is a lock-free read).
class fair_queue {
public:
  /// Makes a group; throws bad_alloc. Tests pass one that fails on demand.
  using group_maker = std::unique_ptr<queue_group> (*)(const std::string& name);
  static std::unique_ptr<queue_group> make_group(const std::string& name) {
    return std::make_unique<queue_group>(name);
  }

  explicit fair_queue(queue_limits limits, group_maker make = make_group) noexcept
      : limits_(limits), make_(make) {}
  fair_queue(const fair_queue&) = delete;
  fair_queue& operator=(const fair_queue&) = delete;
  TETHER_DECL ~fair_queue();

  /// Queues `task`. When `replaced` is still queued, takes it out in the same step (so it does not count against
  /// the bounds). Throws executor_stopped after close() and queue_full when a bound is reached; then nothing
  /// changed. Without the lock, max_queued holds exactly for one submitting thread; submits racing on several
  /// threads may pass it by one each.
  TETHER_DECL void push(task_record& task, task_record* replaced);

  /// The next task by weighted round-robin, now counted as running, with the queue's reference; nullptr when
  /// nothing is queued.
  TETHER_DECL ref<task_record> pop();

  /// A running task ended: forgets it. The caller holds the reference that pop() gave it until this returned.
  TETHER_DECL void finish(task_record& task) noexcept;

  /// finish(task) and pop() in one step: a worker that goes on to its next task takes the lock once, not twice.
  TETHER_DECL ref<task_record> finish_and_pop(task_record& task) noexcept;

  /// Takes a queued task out; false when it is not queued (already running or ended).
  TETHER_DECL bool remove(task_record& task) noexcept;

  /// Takes every queued task of the groups that `match` accepts out of the queue (into `queued`) and lists their
  /// running ones (into `running`). When `match` or an allocation throws, no task has been taken out yet.
  TETHER_DECL void take_matching(const std::function<bool(std::string_view)>& match,
                                 std::vector<ref<task_record>>& queued, std::vector<ref<task_record>>& running);

  /// Refuses every later push() and returns the tasks that are queued or running now.
  TETHER_DECL std::vector<ref<task_record>> close();

  /// True after close(); a hint for early refusal (push() checks again: under the lock, or by the intake's mark).
  bool closed() const noexcept { return closed_.load(std::memory_order_acquire); }
  /// Throws executor_stopped for a submit of `task` after close().
  [[noreturn]] TETHER_DECL static void refuse_closed(const task_record& task);

  /// How many tasks are queued; a hint read without the lock (seq_cst: pairs with a worker's sleep check).
  std::size_t queued() const noexcept {
    const std::ptrdiff_t n = queued_.load(std::memory_order_seq_cst);
    return n > 0 ? static_cast<std::size_t>(n) : 0;
  }

private:
  /// The group named `name`, or nullptr.
  TETHER_DECL queue_group* find_group(std::string_view name) noexcept;
  TETHER_DECL queue_group& add_group(const std::string& name);
  /// The group named `name`, made if need be; nullptr without memory for it.
  TETHER_DECL queue_group* group_for(const std::string& name) noexcept;
  /// Puts `task` (in no list) at the end of `g`'s queue.
  TETHER_DECL void file(task_record& task, queue_group& g) noexcept;
  /// Counts `task` (in no list) as queued and files it in `g`, or parks it when `g` is null (no memory for it) or
  /// other tasks are parked (it goes behind them).
  TETHER_DECL void file_or_park(task_record& task, queue_group* g) noexcept;
  TETHER_DECL void push_unlocked(task_record& task);
  /// Files the parked tasks, then what the intake holds, oldest first; what cannot be filed is parked.
  TETHER_DECL void drain_locked() noexcept;
  /// Files or parks a stack of tasks taken from the intake (newest first).
  TETHER_DECL void absorb(task_record* newest) noexcept;
  /// The intake's head once the queue is closed: no push goes on after it.
  task_record* closed_mark() noexcept { return reinterpret_cast<task_record*>(this); }
  TETHER_DECL task_record* pop_locked() noexcept;
  TETHER_DECL void finish_locked(task_record& task) noexcept;
  TETHER_DECL void unlink_queued(task_record& task) noexcept;
  TETHER_DECL void ring_insert(queue_group& g) noexcept;
  TETHER_DECL void ring_remove(queue_group& g) noexcept;
  TETHER_DECL void forget_if_empty(queue_group& g) noexcept;
  TETHER_DECL void check_bounds(const task_record& task, const queue_group* g, const task_record* leaving) const;

  /// Groups with nothing queued or running are forgotten once there are more than this many.
  static constexpr std::size_t kept_idle_groups = 64;

  const queue_limits limits_;
  const group_maker make_;
  mutable spin_lock mutex_;
  // Keys view the groups' own names.
  std::unordered_map<std::string_view, std::unique_ptr<queue_group>, name_hasher, std::equal_to<>> groups_;
  queue_group* turn_ = nullptr;        // the group pop() serves next; nullptr when nothing is queued
  queue_group* last_group_ = nullptr;  // the group that push() found or made last
  std::size_t total_ = 0;        // filed and parked tasks, guarded by mutex_
  task_list parked_;             // taken from the intake, not yet filed for want of memory; guarded by mutex_
  std::atomic<bool> closed_{false};  // written under mutex_; closed() reads it without
  /// Tasks queued: in the intake, parked or filed. A push counts its task once it is in the intake, so a worker
  /// that took it meanwhile may have counted it out first: the count can be below zero for a moment.
  std::atomic<std::ptrdiff_t> queued_{0};
  /// Pushed tasks not yet filed, newest first through their `next` links; closed_mark() once closed. Apart from
  /// the lock's line: submitters write it, and the workers' lock must not move with it.
  alignas(64) std::atomic<task_record*> intake_{nullptr};
};

}  // namespace tether::inline v1::detail

#if TETHER_HEADER_ONLY
#  include <tether/impl/fair_queue.ipp>
#endif
