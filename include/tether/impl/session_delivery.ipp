// SPDX-License-Identifier: BSL-1.0
// Out-of-line definitions for session_manager.hpp: the callbacks, in order, on the manager thread or deliver_on.
#pragma once

#include <tether/affine_executor.hpp>
#include <tether/detail/session_core.hpp>

#include <fmt/format.h>

#include <cstdio>

namespace tether::inline v1::detail {

namespace session_impl {
/// What deliver_on runs: it drains the core's delivery queue. When the executor drops it unrun (it stopped), the
/// token's destructor tells the core, which then finishes the sessions without their callbacks.
struct pump_token {
  explicit pump_token(std::shared_ptr<session_core> c) noexcept : core(std::move(c)) {}
  pump_token(const pump_token&) = delete;
  pump_token& operator=(const pump_token&) = delete;
  ~pump_token() {
    // relaxed: the executor runs and destroys the pump in an order its own synchronisation provides.
    if (!ran.load(std::memory_order_relaxed)) core->pump_dropped();
  }
  std::shared_ptr<session_core> core;
  std::atomic<bool> ran{false};
};

struct pump {
  std::shared_ptr<pump_token> token;  // shared, so that copies of the pump stay one pump
  void operator()() const {
    token->ran.store(true, std::memory_order_relaxed);  // see ~pump_token
    token->core->run_pump();
  }
};
}  // namespace session_impl

// ---- handlers and subscriptions ---------------------------------------------------------------------------------

template <class Fn>
std::shared_ptr<const Fn> shared_or_null(Fn fn) {
  return fn ? std::make_shared<const Fn>(std::move(fn)) : nullptr;
}

TETHER_DECL void session_core::set_probe(probe_fn fn) {
  auto p = shared_or_null(std::move(fn));
  std::lock_guard lock(handlers_mutex_);
  probe_.swap(p);
}

TETHER_DECL void session_core::set_first_session(hook_fn fn) {
  auto p = shared_or_null(std::move(fn));
  std::lock_guard lock(handlers_mutex_);
  first_session_.swap(p);
}

TETHER_DECL void session_core::set_idle(hook_fn fn) {
  auto p = shared_or_null(std::move(fn));
  std::lock_guard lock(handlers_mutex_);
  idle_.swap(p);
}

TETHER_DECL void session_core::set_error_handler(error_fn fn) {
  auto p = shared_or_null(std::move(fn));
  std::lock_guard lock(handlers_mutex_);
  error_handler_.swap(p);
}

TETHER_DECL std::shared_ptr<end_subscriber> session_core::subscribe(
    std::function<void(const session_info&, end_reason)> fn) {
  if (!fn) raise(errc::invalid_argument, "tether::session_manager::subscribe_end: the subscriber is empty");
  auto s = std::make_shared<end_subscriber>(std::move(fn));
  std::lock_guard lock(handlers_mutex_);
  subscribers_.push_back(s);
  return s;
}

TETHER_DECL void session_core::unsubscribe(end_subscriber& s) noexcept {
  auto returned = std::make_shared<event>();
  {
    std::lock_guard lock(handlers_mutex_);
    std::erase_if(subscribers_, [&s](const auto& p) { return p.get() == &s; });
    s.live = false;
    // A subscriber that unsubscribes itself must not wait for its own return.
    if (!s.running || s.runner == std::this_thread::get_id()) return;
    s.unsubscribed = returned;
  }
  returned->wait();
}

// ---- deliveries: the callbacks, in order, one at a time -------------------------------------------------------

TETHER_DECL void session_core::hand_over() {
  bool post = false, run_here = false, callbacks = true;
  {
    std::lock_guard lock(delivery_mutex_);
    if (deliveries_.empty()) deliveries_.swap(outbox_);
    else deliveries_.insert(deliveries_.end(), std::make_move_iterator(outbox_.begin()),
                            std::make_move_iterator(outbox_.end()));
    if (deliveries_.empty()) return;
    if (!deliver_on_ || executor_failed_) {
      run_here = true;
      callbacks = !executor_failed_;
    } else if (!pump_posted_) {
      pump_posted_ = post = true;
    }
  }
  outbox_.clear();
  if (post) post_pump();
  if (run_here) run_deliveries(callbacks);
}

TETHER_DECL void session_core::post_pump() {
  try {
    deliver_on_->post(session_impl::pump{std::make_shared<session_impl::pump_token>(shared_from_this())});
  } catch (...) {
    fail_executor(std::current_exception());
    run_deliveries(false);
  }
}

TETHER_DECL void session_core::run_pump() { run_deliveries(true); }

TETHER_DECL void session_core::pump_dropped() noexcept {
  {
    // A pump left over after shutdown() ran the deliveries on the executor's thread itself has lost nothing.
    std::lock_guard lock(delivery_mutex_);
    if (deliveries_.empty() && !delivering_) {
      pump_posted_ = false;
      return;
    }
  }
  fail_executor(std::make_exception_ptr(error(errc::abandoned, "tether::session_manager: deliver_on dropped the "
                                                               "session callbacks unrun (it stopped)")));
}

/// deliver_on will not run our callbacks: from now on the sessions end without them (their contexts are still
/// revoked, subscribers still told), on the manager thread or in shutdown().
TETHER_DECL void session_core::fail_executor(std::exception_ptr why) noexcept {
  std::vector<shared_event> waiting;
  bool first = false;
  {
    std::lock_guard lock(delivery_mutex_);
    first = !std::exchange(executor_failed_, true);
    pump_posted_ = false;
    waiting.swap(drain_waiters_);
  }
  for (const shared_event& e : waiting) e->set();
  if (first) report(why, "tether::session_manager: deliver_on (later callbacks are skipped)");
  {
    std::lock_guard lock(mutex_);
    kicked_ = true;
  }
  parker_.unpark();
}

TETHER_DECL void session_core::run_deliveries(bool callbacks) {
  {
    std::lock_guard lock(delivery_mutex_);
    if (delivering_) return;  // the runner at work takes these too
    delivering_ = true;
  }
  while (take_batch()) {
    const auto probe = load(probe_);
    for (session_event& e : batch_) deliver(e, probe.get(), callbacks);
    batch_.clear();
  }
}

TETHER_DECL bool session_core::take_batch() {
  std::vector<shared_event> drained;
  {
    std::lock_guard lock(delivery_mutex_);
    if (!deliveries_.empty()) {
      batch_.swap(deliveries_);
      return true;
    }
    delivering_ = pump_posted_ = false;
    drained.swap(drain_waiters_);
  }
  for (const shared_event& e : drained) e->set();
  return false;
}

TETHER_DECL void session_core::deliver(session_event& e, const probe_fn* probe, bool callbacks) {
  session_record* r = e.record.get();
  switch (e.what) {
    case session_event::kind::first_session:
      if (callbacks) call_hook(load(first_session_), "on_first_session");
      return;
    case session_event::kind::start:
      if (callbacks) invoke(*r, r->callbacks.on_start, "on_start");
      return;
    case session_event::kind::heartbeat:
      if (callbacks) heartbeat(e.record, probe);
      return;
    case session_event::kind::end: return finish(e.record, e.reason, callbacks);
    case session_event::kind::resume: return;
  }
}

TETHER_DECL void session_core::heartbeat(const record_ptr& r, const probe_fn* probe) {
  session_record& rec = *r;
  // A beat that fell due while the session was active is delivered even if it has disconnected or ended since (its
  // end comes after it), so that a manual clock gives the same beats however far it jumps. The probe is asked only
  // about a session that is still active.
  if (probe && rec.state.load() == session_state::active) {
    bool alive = true;
    try {
      context_scope scope(rec.info.ctx);
      alive = (*probe)(rec.info.id);
    } catch (...) {
      report(std::current_exception(), fmt::format("tether::session_manager: the probe of session '{}'", rec.info.id));
    }
    // This delivery is the session's latest event so far, so its end can follow right here, in order.
    if (!alive) {
      if (end_session(rec)) finish(r, end_reason::probe_failed, true);
      return;
    }
  }
  invoke(rec, rec.callbacks.on_heartbeat, "on_heartbeat");
}

TETHER_DECL void session_core::finish(const record_ptr& r, end_reason reason, bool callbacks) {
  session_record& rec = *r;
  if (callbacks) invoke(rec, rec.callbacks.on_end, "on_end", reason);
  notify_subscribers(rec, reason);
  rec.life.revoke();
  {
    auto& shard = table_.shard_for(rec.info.id);
    std::lock_guard lock(shard.mutex);
    auto it = shard.sessions.find(rec.info.id);
    if (it != shard.sessions.end() && it->second == r) shard.sessions.erase(it);
  }
  // relaxed: the 1 -> 0 fall is one point in alive_'s modification order; see insert().
  if (alive_.fetch_sub(1, std::memory_order_relaxed) == 1 && callbacks) call_hook(load(idle_), "on_idle");
}

TETHER_DECL void session_core::notify_subscribers(session_record& r, end_reason reason) {
  std::vector<std::shared_ptr<end_subscriber>> subscribers;
  {
    std::lock_guard lock(handlers_mutex_);
    if (subscribers_.empty()) return;
    subscribers = subscribers_;
  }
  for (auto& s : subscribers) {
    {
      std::lock_guard lock(handlers_mutex_);
      if (!s->live) continue;
      s->running = true;
      s->runner = std::this_thread::get_id();
    }
    invoke(r, s->fn, "an end subscriber", reason);
    shared_event waiting;
    {
      std::lock_guard lock(handlers_mutex_);
      s->running = false;
      waiting = std::exchange(s->unsubscribed, nullptr);
    }
    if (waiting) waiting->set();
  }
}

template <class Fn, class... Args>
void session_core::invoke(session_record& r, const Fn& fn, std::string_view what, Args... args) {
  if (!fn) return;
  // relaxed: a snapshot for the callback; touch() makes no promise about when a callback sees it.
  r.info.last_touch = to_time_point(r.last_touch.load(std::memory_order_relaxed));
  try {
    context_scope scope(r.info.ctx);
    fn(r.info, args...);
  } catch (...) {
    report(std::current_exception(), fmt::format("tether::session_manager: {} of session '{}'", what, r.info.id));
  }
}

TETHER_DECL void session_core::call_hook(const std::shared_ptr<const hook_fn>& hook, std::string_view what) {
  if (!hook) return;
  try {
    (*hook)();
  } catch (...) {
    report(std::current_exception(), fmt::format("tether::session_manager: {}", what));
  }
}

TETHER_DECL void session_core::report(std::exception_ptr e, std::string_view where) noexcept {
  try {
    if (const auto handler = load(error_handler_)) {
      try {
        (*handler)(e, where);
        return;
      } catch (...) {
        // The handler failed too: fall back to stderr for the original error.
      }
    }
    std::string what = "an exception not derived from std::exception";
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& x) {
      what = x.what();
    } catch (...) {
    }
    std::fputs(fmt::format("{} threw: {}\n", where, what).c_str(), stderr);
  } catch (...) {
    // Out of memory while reporting: nothing more we can do, and the manager must go on.
  }
}

/// After the manager thread has gone: see that every end handed to deliver_on is delivered (or given up).
TETHER_DECL void session_core::finish_deliveries() {
  if (!deliver_on_) return;  // the manager thread delivered everything itself before it exited
  if (deliver_on_->on_owner_thread()) return run_deliveries(true);
  for (;;) {
    auto drained = std::make_shared<event>();
    {
      std::lock_guard lock(delivery_mutex_);
      if (executor_failed_) break;
      if (deliveries_.empty() && !delivering_) return;
      drain_waiters_.push_back(drained);
    }
    drained->wait();
  }
  run_deliveries(false);
}

}  // namespace tether::inline v1::detail
