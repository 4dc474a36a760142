// SPDX-License-Identifier: BSL-1.0
// Out-of-line definitions for detail/fair_queue.hpp.
#pragma once

#include <tether/detail/fair_queue.hpp>

#include <utility>

namespace tether::inline v1::detail {

TETHER_DECL fair_queue::~fair_queue() {
  // Normally empty: the manager ends every task before it goes. Release what is left all the same.
  task_record* pushed = intake_.load(std::memory_order_acquire);
  while (pushed && pushed != closed_mark()) intrusive_ptr_release(std::exchange(pushed, pushed->next));
  while (task_record* t = parked_.front()) {
    parked_.erase(*t);
    intrusive_ptr_release(t);
  }
  for (auto& [name, g] : groups_)
    while (task_record* t = g->queued.front()) {
      g->queued.erase(*t);
      intrusive_ptr_release(t);
    }
}

TETHER_DECL void fair_queue::push(task_record& task, task_record* replaced) {
  if (!replaced && limits_.max_queued_per_group == 0) return push_unlocked(task);
  bool take_replaced = false;
  {
    std::lock_guard lock(mutex_);
    drain_locked();  // what earlier pushes left in the intake goes first, and `replaced` may be there
    take_replaced = replaced && replaced->place == task_place::queued;
    if (closed_.load(std::memory_order_relaxed)) refuse_closed(task);  // partner: mutex_
    queue_group* known = find_group(task.group);
    check_bounds(task, known, take_replaced ? replaced : nullptr);
    queue_group& g = known ? *known : add_group(task.group);
    intrusive_ptr_add_ref(&task);
    file_or_park(task, &g);
    // Only now, so that a group left empty by the replaced task is not forgotten while `g` is in use. One in, one
    // out: the count stays, and it is not 0, so no worker sleeps on it.
    if (take_replaced) unlink_queued(*replaced);
    else queued_.fetch_add(1, std::memory_order_seq_cst);
  }
  if (take_replaced) intrusive_ptr_release(replaced);  // the queue's reference; the caller holds another
}

TETHER_DECL void fair_queue::push_unlocked(task_record& task) {
  if (limits_.max_queued != 0 && queued() >= limits_.max_queued)
    raise(errc::queue_full, "tether::task_manager::submit: task '{}' not queued: {} tasks are queued (max_queued)",
          task.id, queued());
  intrusive_ptr_add_ref(&task);  // the queue's
  task.home = nullptr;
  task.place = task_place::queued;  // read under the lock only after the intake handed the task over (acquire)
  task_record* newest = intake_.load(std::memory_order_relaxed);
  do {
    if (newest == closed_mark()) {
      intrusive_ptr_release(&task);  // not the last: the caller holds one
      refuse_closed(task);
    }
    task.next = newest;
    // release: the record's fields reach whoever takes the intake.
  } while (!intake_.compare_exchange_weak(newest, &task, std::memory_order_release, std::memory_order_relaxed));
  // Counted only now that a worker can find it, so that a worker never looks for a task that is not there yet.
  // seq_cst: pairs with a worker's sleep check (see task_core::wake_one()).
  queued_.fetch_add(1, std::memory_order_seq_cst);
}

TETHER_DECL void fair_queue::file(task_record& task, queue_group& g) noexcept {
  task.home = &g;
  task.place = task_place::queued;
  g.queued.push_back(task);
  ++g.queued_count;
  g.weight = task.weight;
  if (g.credit > g.weight) g.credit = g.weight;
  if (!g.ring_next) ring_insert(g);
}

TETHER_DECL queue_group* fair_queue::group_for(const std::string& name) noexcept {
  if (queue_group* known = find_group(name)) return known;
  try {
    return &add_group(name);
  } catch (...) {  // out of memory
    return nullptr;
  }
}

TETHER_DECL void fair_queue::drain_locked() noexcept {
  // Parked tasks first, in order, while their groups can be made.
  while (task_record* t = parked_.front()) {
    queue_group* g = group_for(t->group);
    if (!g) break;  // still no memory
    parked_.erase(*t);
    file(*t, *g);
  }
  // The intake is taken even when parked tasks remain (what it holds is then parked behind them), so that once a
  // drain returns every pushed task is filed or parked: remove(), take_matching() and a replacing push unlink only
  // from there.
  task_record* newest = intake_.load(std::memory_order_relaxed);
  if (!newest || newest == closed_mark()) return;
  // Submitters only add to a head that is not the closed mark, and close() sets it under this lock: the exchange
  // cannot take the mark away.
  absorb(intake_.exchange(nullptr, std::memory_order_acquire));
}

TETHER_DECL void fair_queue::absorb(task_record* newest) noexcept {
  task_record* oldest = nullptr;  // reversed, so that tasks are filed in the order they were pushed
  while (newest) {
    task_record* next = newest->next;
    newest->next = oldest;
    oldest = newest;
    newest = next;
  }
  while (oldest) {
    task_record& t = *std::exchange(oldest, oldest->next);
    t.next = nullptr;
    file_or_park(t, parked_.empty() ? group_for(t.group) : nullptr);  // no group made for a task that waits anyway
  }
}

TETHER_DECL void fair_queue::file_or_park(task_record& task, queue_group* g) noexcept {
  ++total_;
  if (g && parked_.empty()) return file(task, *g);
  // Behind the tasks parked for want of memory, or parked itself; remove() and take_matching() find it here.
  task.home = nullptr;
  task.place = task_place::queued;
  parked_.push_back(task);
}

TETHER_DECL void fair_queue::refuse_closed(const task_record& task) {
  raise(errc::executor_stopped, "tether::task_manager::submit: task '{}' rejected: the manager was shut down",
        task.id);
}

TETHER_DECL void fair_queue::check_bounds(const task_record& task, const queue_group* g,
                                          const task_record* leaving) const {
  const std::size_t total = total_ - (leaving ? 1 : 0);
  if (limits_.max_queued != 0 && total >= limits_.max_queued)
    raise(errc::queue_full, "tether::task_manager::submit: task '{}' not queued: {} tasks are queued (max_queued)",
          task.id, total);
  std::size_t in_group = g ? g->queued_count : 0;
  if (leaving && g && leaving->home == g) --in_group;
  if (limits_.max_queued_per_group != 0 && in_group >= limits_.max_queued_per_group)
    raise(errc::queue_full,
          "tether::task_manager::submit: task '{}' not queued: group '{}' has {} queued tasks (max_queued_per_group)",
          task.id, task.group, in_group);
}

TETHER_DECL queue_group* fair_queue::find_group(std::string_view name) noexcept {
  // Most pushes follow one of the same group: the map's bucket and node are then not read (two cache misses for
  // a submit to a pool that has been idle).
  if (last_group_ && last_group_->name == name) return last_group_;
  const auto found = groups_.find(name);
  if (found == groups_.end()) return nullptr;
  return last_group_ = found->second.get();
}

TETHER_DECL queue_group& fair_queue::add_group(const std::string& name) {
  std::unique_ptr<queue_group> g = make_(name);
  queue_group& made = *g;
  groups_.emplace(std::string_view(made.name), std::move(g));
  return *(last_group_ = &made);
}

TETHER_DECL ref<task_record> fair_queue::pop() {
  std::lock_guard lock(mutex_);
  return ref<task_record>(pop_locked(), false);  // the queue's reference goes with it
}

TETHER_DECL task_record* fair_queue::pop_locked() noexcept {
  drain_locked();
  if (!turn_) return nullptr;
  queue_group& g = *turn_;
  task_record& t = *g.queued.front();
  t.prefetch_lines();
  g.queued.erase(t);
  --g.queued_count;
  --total_;
  t.place = task_place::running;
  g.running.push_back(t);
  ++g.running_count;
  if (g.queued.empty()) {
    ring_remove(g);
  } else if (--g.credit == 0) {
    g.credit = g.weight;
    turn_ = g.ring_next;
  }
  queued_.fetch_sub(1, std::memory_order_seq_cst);
  if (turn_) turn_->queued.front()->prefetch_lines();  // most likely the next task a worker takes
  return &t;
}

TETHER_DECL void fair_queue::finish(task_record& task) noexcept {
  std::lock_guard lock(mutex_);
  finish_locked(task);
}

TETHER_DECL ref<task_record> fair_queue::finish_and_pop(task_record& task) noexcept {
  std::lock_guard lock(mutex_);
  finish_locked(task);
  return ref<task_record>(pop_locked(), false);  // the queue's reference goes with it
}

TETHER_DECL void fair_queue::finish_locked(task_record& task) noexcept {
  if (task.place != task_place::running) return;
  queue_group& g = *task.home;
  g.running.erase(task);
  --g.running_count;
  task.place = task_place::finished;
  task.home = nullptr;
  forget_if_empty(g);
}

TETHER_DECL bool fair_queue::remove(task_record& task) noexcept {
  {
    std::lock_guard lock(mutex_);
    drain_locked();  // `task` may still be in the intake
    if (task.place != task_place::queued) return false;
    unlink_queued(task);
    queued_.fetch_sub(1, std::memory_order_seq_cst);
  }
  intrusive_ptr_release(&task);
  return true;
}

TETHER_DECL void fair_queue::unlink_queued(task_record& task) noexcept {
  if (!task.home) {  // parked
    parked_.erase(task);
    --total_;
    task.place = task_place::finished;
    return;
  }
  queue_group& g = *task.home;
  g.queued.erase(task);
  --g.queued_count;
  --total_;
  task.place = task_place::finished;
  task.home = nullptr;
  if (g.queued.empty()) ring_remove(g);
  forget_if_empty(g);
}

TETHER_DECL void fair_queue::take_matching(const std::function<bool(std::string_view)>& match,
                                           std::vector<ref<task_record>>& queued,
                                           std::vector<ref<task_record>>& running) {
  std::lock_guard lock(mutex_);
  drain_locked();
  // First everything that may throw (`match`, and growing the vectors), while nothing is taken out yet: a task taken
  // out of the queue and then dropped by an exception would never end, and its waiters would wait for ever.
  std::vector<task_record*> parked_hits;
  for (task_record* t = parked_.front(); t; t = t->next)
    if (match(t->group)) parked_hits.push_back(t);
  std::vector<queue_group*> hit;
  std::size_t count = parked_hits.size();
  for (auto& [name, g] : groups_) {
    if (!match(name)) continue;
    hit.push_back(g.get());
    count += g->queued_count;
    for (task_record* t = g->running.front(); t; t = t->next) running.emplace_back(t);
  }
  queued.reserve(queued.size() + count);
  // Then the taking out, which cannot fail: emplace_back has the room.
  for (task_record* t : parked_hits) {
    queued.emplace_back(t, false);  // takes over the queue's reference
    unlink_queued(*t);
  }
  for (queue_group* g : hit)
    // Counted, because the last unlink may forget the group (when nothing of it runs): `g` is not read after it.
    for (std::size_t n = g->queued_count; n > 0; --n) {
      task_record* t = g->queued.front();
      queued.emplace_back(t, false);
      unlink_queued(*t);
    }
  queued_.fetch_sub(static_cast<std::ptrdiff_t>(count), std::memory_order_seq_cst);
}

TETHER_DECL std::vector<ref<task_record>> fair_queue::close() {
  std::lock_guard lock(mutex_);
  closed_.store(true, std::memory_order_release);
  drain_locked();
  // From here on a push finds the mark and refuses; what came before it is taken now.
  task_record* last = intake_.exchange(closed_mark(), std::memory_order_acquire);
  if (last != closed_mark()) absorb(last);
  std::vector<ref<task_record>> live;
  for (task_record* t = parked_.front(); t; t = t->next) live.emplace_back(t);
  for (auto& [name, g] : groups_)
    for (task_list* list : {&g->running, &g->queued})
      for (task_record* t = list->front(); t; t = t->next)
        if (!t->has_ended()) live.emplace_back(t);  // one that ended but is not yet forgotten is not "live"
  return live;
}

TETHER_DECL void fair_queue::ring_insert(queue_group& g) noexcept {
  g.credit = g.weight;
  if (!turn_) {
    g.ring_prev = g.ring_next = &g;
    turn_ = &g;
    return;
  }
  // Just before the group whose turn it is: the newcomer is served after every group already waiting.
  g.ring_next = turn_;
  g.ring_prev = turn_->ring_prev;
  turn_->ring_prev->ring_next = &g;
  turn_->ring_prev = &g;
}

TETHER_DECL void fair_queue::ring_remove(queue_group& g) noexcept {
  if (!g.ring_next) return;
  if (g.ring_next == &g) {
    turn_ = nullptr;
  } else {
    g.ring_prev->ring_next = g.ring_next;
    g.ring_next->ring_prev = g.ring_prev;
    if (turn_ == &g) turn_ = g.ring_next;
  }
  g.ring_prev = g.ring_next = nullptr;
  g.credit = 0;
}

TETHER_DECL void fair_queue::forget_if_empty(queue_group& g) noexcept {
  if (g.queued_count != 0 || g.running_count != 0) return;
  ring_remove(g);
  // A few idle groups stay: a group whose queue keeps running dry would otherwise be made anew for every task.
  if (groups_.size() <= kept_idle_groups) return;
  if (last_group_ == &g) last_group_ = nullptr;
  groups_.erase(std::string_view(g.name));  // destroys `g`
}

}  // namespace tether::inline v1::detail
