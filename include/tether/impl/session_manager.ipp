// SPDX-License-Identifier: BSL-1.0
// Out-of-line definitions for session_manager.hpp: construction, the calls of other threads, and the public API.
#pragma once

#include <tether/detail/session_core.hpp>
#include <tether/session_manager.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <random>

namespace tether::inline v1 {

TETHER_DECL std::string_view to_string(end_reason r) noexcept {
  switch (r) {
    case end_reason::closed: return "closed";
    case end_reason::expired: return "expired";
    case end_reason::probe_failed: return "probe_failed";
    case end_reason::shutdown: return "shutdown";
  }
  return "unknown end_reason";
}

TETHER_DECL std::string_view to_string(session_state s) noexcept {
  switch (s) {
    case session_state::active: return "active";
    case session_state::disconnected: return "disconnected";
    case session_state::ended: return "ended";
  }
  return "unknown session_state";
}

namespace detail {

namespace session_impl {
using std::chrono::milliseconds;
using std::chrono::nanoseconds;

inline session_time to_ns(milliseconds d) noexcept { return nanoseconds(d).count(); }

inline session_time checked(milliseconds d, bool positive, std::string_view name) {
  if (d.count() < 0 || (positive && d.count() == 0))
    raise(errc::invalid_argument, "tether::session_manager::session_manager: {} must be {}, not {} ms", name,
          positive ? "positive" : "zero or more", d.count());
  return to_ns(d);
}

/// Timer resolution: fine enough that a slot is a small part of the shortest period, coarse enough that a real-time
/// manager wakes at most 1000 times a second (and only when something is due).
inline session_time resolution_for(session_time interval, session_time timeout, session_time grace) noexcept {
  session_time finest = interval;
  if (timeout > 0) finest = std::min(finest, timeout);
  if (grace > 0) finest = std::min(finest, grace);
  return std::clamp<session_time>(finest / 16, to_ns(milliseconds(1)), to_ns(milliseconds(50)));
}

/// A bijection on 64 bits (the splitmix64 finaliser), so distinct counters give distinct, unguessable-looking ids.
inline std::uint64_t mix(std::uint64_t x) noexcept {
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

inline std::uint64_t random_salt() {
  std::random_device device;
  return (std::uint64_t{device()} << 32) ^ device();
}

constexpr std::size_t wheel_slots = 4096;

}  // namespace session_impl

// ---- construction and the calls of other threads --------------------------------------------------------------

TETHER_DECL session_core::session_core(const session_manager::options& o)
    : interval_(session_impl::checked(o.heartbeat_interval, true, "heartbeat_interval")),
      timeout_(session_impl::checked(o.timeout, false, "timeout")),
      grace_(session_impl::checked(o.grace, false, "grace")),
      deliver_on_(o.deliver_on),
      clock_(o.clock),
      id_salt_(session_impl::random_salt()),
      wheel_(session_impl::resolution_for(interval_, timeout_, grace_), session_impl::wheel_slots, now()) {}

TETHER_DECL session_core::~session_core() = default;

TETHER_DECL void session_core::start() {
  if (clock_) manual_clock_access::attach(*clock_, *this);
  try {
    thread_ = std::thread([this] { run_monitor(); });
  } catch (...) {
    if (clock_) manual_clock_access::detach(*clock_, *this);
    throw;
  }
}

TETHER_DECL session_time session_core::now() const noexcept {
  const auto t = clock_ ? clock_->now() : std::chrono::steady_clock::now();
  return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
}

TETHER_DECL std::string session_core::make_id() {
  // 15 hex digits (60 bits) fit std::string's inline buffer, so an id costs no allocation; the rare repeat that
  // the dropped bits allow is caught by open(), which then takes the next id.
  const auto bits = session_impl::mix(id_salt_ + next_id_.fetch_add(1, std::memory_order_relaxed));  // only unique
  return fmt::format("{:015x}", bits >> 4);
}

TETHER_DECL std::string session_core::open(session_callbacks callbacks, std::string id) {
  if (!id.empty()) {
    const auto record = std::make_shared<session_record>(std::move(id), std::move(callbacks), now());
    if (!insert(record))
      raise(errc::invalid_argument, "tether::session_manager::open: session '{}' is already in use", record->info.id);
    return record->info.id;
  }
  for (;;) {
    const auto record = std::make_shared<session_record>(make_id(), std::move(callbacks), now());
    if (insert(record)) return record->info.id;
    callbacks = std::move(record->callbacks);  // a user took the id we made up: try the next one
  }
}

TETHER_DECL bool session_core::insert(const record_ptr& record) {
  auto& shard = table_.shard_for(record->info.id);
  std::lock_guard shard_lock(shard.mutex);
  if (!shard.sessions.try_emplace(record->info.id, record).second) return false;
  {
    // Under the shard lock, so that a close() of this id can only queue its end after our start.
    std::lock_guard lock(mutex_);
    if (stopping_) {
      shard.sessions.erase(record->info.id);
      raise(errc::executor_stopped, "tether::session_manager::open: the manager is shut down; session '{}' not opened",
            record->info.id);
    }
    active_.fetch_add(1, std::memory_order_relaxed);  // only a count
    // relaxed: ordered against the decrement in finish() by this mutex and the queue (see docs/session_manager.md).
    if (alive_.fetch_add(1, std::memory_order_relaxed) == 0)
      commands_.push_back({session_event::kind::first_session, {}, nullptr});
    commands_.push_back({session_event::kind::start, {}, record});
    note_sender();
  }
  parker_.unpark();
  return true;
}

/// Under mutex_: a command sent from a callback on the manager thread holds settle() up until it is handled.
TETHER_DECL void session_core::note_sender() noexcept {
  // relaxed: the id is this thread's own when equal; any other value means "not us" whatever its age.
  if (std::this_thread::get_id() == thread_id_.load(std::memory_order_relaxed)) own_commands_ = true;
}

TETHER_DECL void session_core::send(session_event e) {
  {
    std::lock_guard lock(mutex_);
    commands_.push_back(std::move(e));
    note_sender();
  }
  parker_.unpark();
}

TETHER_DECL bool session_core::touch(std::string_view id, bool must_exist) {
  auto& shard = table_.shard_for(id);
  std::lock_guard lock(shard.mutex);
  auto it = shard.sessions.find(id);
  if (it == shard.sessions.end()) {
    if (must_exist) raise(errc::unknown_session, "tether::session_manager::touch: no session '{}'", id);
    return false;
  }
  session_record& r = *it->second;
  // seq_cst store, then seq_cst load: pairs with disconnect(), which moves the state, then reads last_touch;
  // one of us sees the other. The time is read under the lock so that a session's touches never go back in time.
  r.last_touch.store(now());
  session_state s = r.state.load();
  if (s == session_state::ended) {
    if (must_exist) raise(errc::unknown_session, "tether::session_manager::touch: session '{}' has ended", id);
    return false;
  }
  if (s == session_state::disconnected && r.state.compare_exchange_strong(s, session_state::active))
    send({session_event::kind::resume, {}, it->second});
  return true;
}

TETHER_DECL bool session_core::close(std::string_view id) {
  auto& shard = table_.shard_for(id);
  std::lock_guard lock(shard.mutex);
  auto it = shard.sessions.find(id);
  if (it == shard.sessions.end() || !end_session(*it->second)) return false;
  send({session_event::kind::end, end_reason::closed, it->second});
  return true;
}

TETHER_DECL bool session_core::end_session(session_record& r, session_state from) noexcept {
  if (!r.state.compare_exchange_strong(from, session_state::ended)) return false;
  active_.fetch_sub(1, std::memory_order_relaxed);  // only a count
  return true;
}

TETHER_DECL bool session_core::end_session(session_record& r) noexcept {
  session_state s = r.state.load();
  while (s != session_state::ended)
    if (r.state.compare_exchange_weak(s, session_state::ended)) {
      active_.fetch_sub(1, std::memory_order_relaxed);  // only a count
      return true;
    }
  return false;
}

TETHER_DECL session_state session_core::state(std::string_view id) const {
  auto& shard = table_.shard_for(id);
  std::lock_guard lock(shard.mutex);
  auto it = shard.sessions.find(id);
  if (it == shard.sessions.end()) raise(errc::unknown_session, "tether::session_manager::state: no session '{}'", id);
  return it->second->state.load();
}

TETHER_DECL context session_core::context_of(std::string_view id) const {
  auto& shard = table_.shard_for(id);
  std::lock_guard lock(shard.mutex);
  auto it = shard.sessions.find(id);
  if (it == shard.sessions.end())
    raise(errc::unknown_session, "tether::session_manager::context_of: no session '{}'", id);
  return it->second->info.ctx;
}

}  // namespace detail

// ---- session_manager and session_subscription -------------------------------------------------------------------

TETHER_DECL session_manager::session_manager() : session_manager(options{}) {}

TETHER_DECL session_manager::session_manager(options o) : core_(std::make_shared<detail::session_core>(o)) {
  core_->start();
}

TETHER_DECL session_manager::~session_manager() { core_->shutdown(); }

TETHER_DECL std::string session_manager::open(session_callbacks callbacks, std::string id) {
  return core_->open(std::move(callbacks), std::move(id));
}

TETHER_DECL void session_manager::touch(std::string_view id) { core_->touch(id, true); }
TETHER_DECL bool session_manager::try_touch(std::string_view id) { return core_->touch(id, false); }
TETHER_DECL bool session_manager::close(std::string_view id) { return core_->close(id); }
TETHER_DECL session_state session_manager::state(std::string_view id) const { return core_->state(id); }
TETHER_DECL context session_manager::context_of(std::string_view id) const { return core_->context_of(id); }
TETHER_DECL std::size_t session_manager::active() const noexcept { return core_->active(); }

TETHER_DECL void session_manager::set_probe(std::function<bool(std::string_view)> probe) {
  core_->set_probe(std::move(probe));
}

TETHER_DECL void session_manager::on_first_session(std::function<void()> fn) {
  core_->set_first_session(std::move(fn));
}
TETHER_DECL void session_manager::on_idle(std::function<void()> fn) { core_->set_idle(std::move(fn)); }

TETHER_DECL void session_manager::set_error_handler(
    std::function<void(std::exception_ptr, std::string_view)> handler) {
  core_->set_error_handler(std::move(handler));
}

TETHER_DECL session_subscription session_manager::subscribe_end(
    std::function<void(const session_info&, end_reason)> fn) {
  return session_subscription(core_, core_->subscribe(std::move(fn)));
}

TETHER_DECL void session_manager::settle() { core_->settle(); }
TETHER_DECL void session_manager::shutdown() { core_->shutdown(); }

TETHER_DECL session_subscription& session_subscription::operator=(session_subscription&& other) noexcept {
  if (this != &other) {
    reset();
    core_ = std::move(other.core_);
    subscriber_ = std::move(other.subscriber_);
  }
  return *this;
}

TETHER_DECL void session_subscription::reset() noexcept {
  if (subscriber_)
    if (auto core = core_.lock()) core->unsubscribe(*subscriber_);
  core_.reset();
  subscriber_.reset();
}

}  // namespace tether::inline v1

// The manager thread and the deliveries, split by idea.
#include <tether/impl/session_monitor.ipp>
#include <tether/impl/session_delivery.ipp>
