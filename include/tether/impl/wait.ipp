// SPDX-License-Identifier: BSL-1.0
// Out-of-line definitions for detail/wait.hpp.
#pragma once

#include <tether/detail/wait.hpp>

#include <utility>

namespace tether::inline v1::detail {

namespace wait_impl {
/// Plain threads: the agent is the thread's own parker.
class thread_blocker final : public blocker {
public:
  void prepare(waiter& w) noexcept override {
    static thread_local parker own;
    w.owner = this;
    w.agent = &own;
  }
  bool block_until(waiter& w, steady_clock::time_point deadline) noexcept override {
    return static_cast<parker*>(w.agent)->park_until(deadline);
  }
  void wake(waiter& w) noexcept override { static_cast<parker*>(w.agent)->unpark(); }
};
}  // namespace wait_impl

TETHER_DECL blocker*& fiber_blocker_slot() noexcept {
  static thread_local blocker* slot = nullptr;
  return slot;
}

TETHER_DECL blocker& current_blocker() noexcept {
  static wait_impl::thread_blocker threads;
  if (blocker* fiber = fiber_blocker_slot()) return *fiber;
  return threads;
}

TETHER_DECL void event::set() noexcept {
  // seq_cst, paired with wait_until(): either we see its `waited_`, or it sees our `set_`. So a set() that nobody
  // waits for costs two atomics and no lock.
  if (set_.exchange(true, std::memory_order_seq_cst)) return;
  if (!waited_.load(std::memory_order_seq_cst)) return;
  waiter* list = nullptr;
  {
    std::lock_guard lock(mutex_);
    list = std::exchange(head_, nullptr);
    for (waiter* w = list; w; w = w->next) w->linked = false;
  }
  // Wake outside the lock; read `next` first, because a woken waiter may return and end its frame.
  while (list) {
    waiter* next = list->next;
    list->owner->wake(*list);
    list = next;
  }
}

TETHER_DECL bool event::wait_until(steady_clock::time_point deadline) noexcept {
  if (is_set()) return true;
  blocker& b = current_blocker();
  waiter w;
  b.prepare(w);
  {
    std::lock_guard lock(mutex_);
    waited_.store(true, std::memory_order_seq_cst);
    if (set_.load(std::memory_order_seq_cst)) return true;
    link(w);
  }
  if (b.block_until(w, deadline)) return true;
  {
    std::lock_guard lock(mutex_);
    if (w.linked) {
      unlink(w);
      return false;
    }
  }
  // set() took us off the list just as the deadline passed: its wake is on the way and must land before `w` dies.
  b.block_until(w, steady_clock::time_point::max());
  return true;
}

TETHER_DECL void event::link(waiter& w) noexcept {
  w.prev = nullptr;
  w.next = head_;
  if (head_) head_->prev = &w;
  head_ = &w;
  w.linked = true;
}

TETHER_DECL void event::unlink(waiter& w) noexcept {
  if (w.prev) w.prev->next = w.next;
  else head_ = w.next;
  if (w.next) w.next->prev = w.prev;
  w.linked = false;
}

}  // namespace tether::inline v1::detail
