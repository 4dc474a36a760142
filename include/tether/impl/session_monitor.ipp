// SPDX-License-Identifier: BSL-1.0
// Out-of-line definitions for session_manager.hpp: the manager thread, its timer wheel, settle and shutdown.
#pragma once

#include <tether/detail/session_core.hpp>

#include <pthread.h>

namespace tether::inline v1::detail {

// ---- settle and shutdown ----------------------------------------------------------------------------------------

TETHER_DECL void session_core::settle() {
  if (std::this_thread::get_id() == thread_id_.load())
    raise(errc::would_deadlock, "tether::session_manager::settle: called on the manager's own thread, "
                                "which would wait for itself");
  auto done = std::make_shared<event>();
  {
    std::lock_guard lock(mutex_);
    if (exited_) return;
    settle_waiters_.push_back(done);
  }
  parker_.unpark();
  done->wait();
}

TETHER_DECL void session_core::shutdown() {
  if (std::this_thread::get_id() == thread_id_.load())
    raise(errc::would_deadlock, "tether::session_manager::shutdown: called on the manager's own thread, "
                                "which cannot join itself");
  std::lock_guard serial(shutdown_mutex_);
  if (shut_down_) return;
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  parker_.unpark();
  if (thread_.joinable()) thread_.join();
  finish_deliveries();
  if (clock_) manual_clock_access::detach(*clock_, *this);
  shut_down_ = true;
}

// ---- the manager thread -----------------------------------------------------------------------------------------

TETHER_DECL void session_core::run_monitor() {
  thread_id_.store(std::this_thread::get_id());
  pthread_setname_np(pthread_self(), "tether-sessions");  // for top -H, gdb, and the benchmark's CPU reading
  std::vector<shared_event> settled;
  for (;;) {
    wait_for_work();
    const bool stop = take_work(settled);
    const session_time t = now();
    for (session_event& e : inbox_) apply(e);
    inbox_.clear();
    wheel_.advance_to(t, [this, t](session_time at, wheel_item& item) { on_due(at, item.record, item.generation, t); });
    if (stop) end_all();
    hand_over();
    // Callbacks that ran here may have sent commands (a close, an open): settle() waits for those too.
    if (!stop && own_commands_pending()) continue;
    for (const shared_event& e : settled) e->set();
    settled.clear();
    if (stop) return exit_monitor();
  }
}

TETHER_DECL bool session_core::own_commands_pending() {
  std::lock_guard lock(mutex_);
  return own_commands_;
}

TETHER_DECL void session_core::wait_for_work() {
  // Real time: sleep until the wheel's next slot falls due. A manual clock wakes us through settle().
  auto until = std::chrono::steady_clock::time_point::max();
  if (!clock_) {
    const session_time due = wheel_.next_due();
    if (due >= 0) until = to_time_point(due);
  }
  {
    std::lock_guard lock(mutex_);
    if (!commands_.empty() || !settle_waiters_.empty() || stopping_ || kicked_) return;
  }
  parker_.park_until(until);  // a wake sent after our look above leaves a token, so it is not lost
}

TETHER_DECL bool session_core::take_work(std::vector<shared_event>& settled) {
  std::lock_guard lock(mutex_);
  inbox_.swap(commands_);
  settled.insert(settled.end(), settle_waiters_.begin(), settle_waiters_.end());
  settle_waiters_.clear();
  kicked_ = own_commands_ = false;
  return stopping_;
}

TETHER_DECL void session_core::apply(session_event& e) {
  session_record* r = e.record.get();
  if (e.what == session_event::kind::start && r->state.load() != session_state::ended) {
    r->next_heartbeat = r->last_touch.load() + interval_;  // nobody touched it yet: last_touch is its opening
    schedule(e.record, next_wake(*r));
  } else if (e.what == session_event::kind::resume) {
    if (r->state.load() == session_state::active) {
      r->next_heartbeat = r->last_touch.load() + interval_;  // the beat follows the touch that resumed it
      schedule(e.record, next_wake(*r));
    }
    return;  // nothing to deliver
  }
  outbox_.push_back(std::move(e));
}

TETHER_DECL void session_core::on_due(session_time at, const record_ptr& r, std::uint32_t generation, session_time t) {
  session_record& rec = *r;
  if (generation != rec.generation) return;  // rescheduled since
  switch (rec.state.load()) {
    case session_state::active: return on_active_due(r, at, t);
    case session_state::disconnected:
      if (at < rec.grace_end) return schedule(r, rec.grace_end);
      if (end_session(rec, session_state::disconnected))
        outbox_.push_back({session_event::kind::end, end_reason::expired, r});
      return;  // else a touch resumed it, and its resume command reschedules it
    case session_state::ended: return;
  }
}

TETHER_DECL void session_core::on_active_due(const record_ptr& r, session_time at, session_time t) {
  session_record& rec = *r;
  const session_time touched = rec.last_touch.load();
  if (timeout_ > 0 && at - touched >= timeout_) return disconnect(r, touched);
  if (at >= rec.next_heartbeat) {
    outbox_.push_back({session_event::kind::heartbeat, {}, r});
    session_time next = rec.next_heartbeat + interval_;
    // Real time: a manager that fell behind skips the beats it missed rather than firing them in a burst. A manual
    // clock steps through every one, so that a test sees each beat.
    if (!clock_ && next <= t) next += ((t - next) / interval_ + 1) * interval_;
    rec.next_heartbeat = next;
  }
  schedule(r, next_wake(rec));
}

TETHER_DECL void session_core::disconnect(const record_ptr& r, session_time touched) {
  session_record& rec = *r;
  session_state expected = session_state::active;
  if (!rec.state.compare_exchange_strong(expected, session_state::disconnected)) return;  // ended meanwhile
  // seq_cst CAS, then seq_cst load: pairs with touch(). A touch that came in while we decided counts; if it saw
  // `disconnected` it has resumed the session itself and sent a resume command.
  if (rec.last_touch.load() != touched) {
    expected = session_state::disconnected;
    if (rec.state.compare_exchange_strong(expected, session_state::active)) schedule(r, next_wake(rec));
    return;
  }
  rec.grace_end = touched + timeout_ + grace_;
  if (grace_ > 0) return schedule(r, rec.grace_end);
  if (end_session(rec, session_state::disconnected))
    outbox_.push_back({session_event::kind::end, end_reason::expired, r});
}

TETHER_DECL void session_core::schedule(const record_ptr& r, session_time at) {
  wheel_.insert(at, wheel_item{r, ++r->generation});
}

TETHER_DECL session_time session_core::next_wake(const session_record& r) const noexcept {
  if (timeout_ == 0) return r.next_heartbeat;
  // relaxed: only a hint; the touch is read again (seq_cst) when the entry fires, so a later touch is not missed.
  return std::min(r.next_heartbeat, r.last_touch.load(std::memory_order_relaxed) + timeout_);
}

TETHER_DECL void session_core::end_all() {
  for (std::size_t i = 0; i < session_table::shard_count; ++i) {
    auto& shard = table_.at(i);
    std::lock_guard lock(shard.mutex);
    for (auto& [id, r] : shard.sessions)
      if (end_session(*r)) outbox_.push_back({session_event::kind::end, end_reason::shutdown, r});
  }
  // A close() that ended a session before we reached its shard may have queued its end after take_work().
  {
    std::lock_guard lock(mutex_);
    inbox_.swap(commands_);
  }
  for (session_event& e : inbox_)
    if (e.what == session_event::kind::end) outbox_.push_back(std::move(e));
  inbox_.clear();
}

TETHER_DECL void session_core::exit_monitor() {
  std::vector<shared_event> late;
  {
    std::lock_guard lock(mutex_);
    exited_ = true;
    late.swap(settle_waiters_);
  }
  for (const shared_event& e : late) e->set();
}

}  // namespace tether::inline v1::detail
