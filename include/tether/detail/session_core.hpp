// SPDX-License-Identifier: BSL-1.0
// The session manager's inside: the sharded session table, the manager thread's timers, and the delivery queue.
// A classic guard, placed after this include rather than #pragma once: included first, this header pulls in
// session_manager.hpp, whose header-only tail includes impl/session_manager.ipp, which needs this header's classes;
// so the nested inclusion must define them and the outer one must then skip them.
#include <tether/session_manager.hpp>

#ifndef TETHER_DETAIL_SESSION_CORE_HPP
#define TETHER_DETAIL_SESSION_CORE_HPP

#include <tether/detail/name_hash.hpp>
#include <tether/detail/parker.hpp>
#include <tether/detail/timer_wheel.hpp>
#include <tether/detail/wait.hpp>

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <vector>

namespace tether::inline v1::detail {

/// Nanoseconds since the epoch of the manager's clock.
using session_time = std::int64_t;

inline std::chrono::steady_clock::time_point to_time_point(session_time t) noexcept {
  return std::chrono::steady_clock::time_point(
      std::chrono::duration_cast<std::chrono::steady_clock::duration>(std::chrono::nanoseconds(t)));
}

/// One session. `info` (but its last_touch), `callbacks` and `life` never change after open; `last_touch` and
/// `state` are shared atomics; the schedule belongs to the manager thread, and info.last_touch to the thread that
/// runs deliveries (one at a time).
struct session_record {
  session_record(std::string id, session_callbacks cb, session_time now)
      : callbacks(std::move(cb)), life(id), last_touch(now) {
    info.id = std::move(id);
    info.ctx = life.attach(context::current());
    info.opened = info.last_touch = to_time_point(now);
  }

  session_info info;
  session_callbacks callbacks;
  lifetime life;
  std::atomic<session_time> last_touch;
  std::atomic<session_state> state{session_state::active};
  // The manager thread's schedule:
  session_time next_heartbeat = 0;
  session_time grace_end = 0;
  std::uint32_t generation = 0;  // of the one wheel entry that counts; older ones are dropped when they fire
};
using record_ptr = std::shared_ptr<session_record>;

/// What the manager thread is told (first_session, start, resume, end) and what it hands on to the deliveries
/// (first_session, start, heartbeat, end).
struct session_event {
  enum class kind : std::uint8_t { first_session, start, resume, heartbeat, end };
  kind what;
  end_reason reason = end_reason::closed;
  record_ptr record;
};

/// A waiter's event, shared with whoever sets it: event::set() may still touch the event after a waiter that saw
/// it set has returned, so a waiter's stack is no place for it.
using shared_event = std::shared_ptr<event>;

/// A subscriber of session_manager::subscribe_end. Every field but `fn` is guarded by the core's handlers mutex.
struct end_subscriber {
  explicit end_subscriber(std::function<void(const session_info&, end_reason)> f) : fn(std::move(f)) {}
  std::function<void(const session_info&, end_reason)> fn;
  bool live = true;
  bool running = false;        // a delivery is calling fn now, on thread `runner`
  std::thread::id runner;
  shared_event unsubscribed;   // set once the running call returns
};

/// The sessions by id, in shards so that touches of different sessions rarely meet on a lock.
class session_table {
public:
  struct alignas(64) shard {
    std::mutex mutex;
    std::unordered_map<std::string, record_ptr, name_hasher, std::equal_to<>> sessions;
  };
  static constexpr std::size_t shard_count = 64;

  shard& shard_for(std::string_view id) noexcept {
    // The high bits: the map inside the shard picks its bucket from the low ones.
    return shards_[name_hash(id) >> 58];
  }
  static_assert(shard_count == 64, "shard_for() takes the top six bits of the hash");
  shard& at(std::size_t i) noexcept { return shards_[i]; }

private:
  shard shards_[shard_count];
};

/// Everything a session_manager is; shared with the callbacks handed to `deliver_on`, so that it outlives them.
/// **Thread safety:** the public members from any thread; the private ones as marked.
class session_core final : public clock_listener, public std::enable_shared_from_this<session_core> {
public:
  using probe_fn = std::function<bool(std::string_view)>;
  using hook_fn = std::function<void()>;
  using error_fn = std::function<void(std::exception_ptr, std::string_view)>;

  explicit session_core(const session_manager::options& o);
  ~session_core();
  void start();

  std::string open(session_callbacks callbacks, std::string id);
  bool touch(std::string_view id, bool must_exist);
  bool close(std::string_view id);
  session_state state(std::string_view id) const;
  context context_of(std::string_view id) const;
  std::size_t active() const noexcept { return active_.load(std::memory_order_relaxed); }  // only a count

  void set_probe(probe_fn fn);
  void set_first_session(hook_fn fn);
  void set_idle(hook_fn fn);
  void set_error_handler(error_fn fn);
  std::shared_ptr<end_subscriber> subscribe(std::function<void(const session_info&, end_reason)> fn);
  void unsubscribe(end_subscriber& s) noexcept;

  void settle();
  void shutdown();
  void clock_advanced() override { settle(); }

  void run_pump();                // a posted delivery pump runs on deliver_on
  void pump_dropped() noexcept;   // deliver_on destroyed a pump without running it

private:
  // Any thread
  session_time now() const noexcept;
  std::string make_id();
  bool insert(const record_ptr& record);
  void send(session_event e);
  void note_sender() noexcept;
  bool end_session(session_record& r, session_state from) noexcept;
  bool end_session(session_record& r) noexcept;
  template <class T>
  std::shared_ptr<const T> load(const std::shared_ptr<const T>& slot) const {
    std::lock_guard lock(handlers_mutex_);
    return slot;
  }

  // The manager thread
  void run_monitor();
  bool take_work(std::vector<shared_event>& settled);
  bool own_commands_pending();
  void wait_for_work();
  void apply(session_event& e);
  void on_due(session_time at, const record_ptr& r, std::uint32_t generation, session_time now);
  void on_active_due(const record_ptr& r, session_time at, session_time now);
  void disconnect(const record_ptr& r, session_time touched);
  void schedule(const record_ptr& r, session_time at);
  session_time next_wake(const session_record& r) const noexcept;
  void end_all();
  void hand_over();
  void exit_monitor();

  // The deliveries (one runner at a time)
  void post_pump();
  void fail_executor(std::exception_ptr why) noexcept;
  void run_deliveries(bool callbacks);
  bool take_batch();
  void deliver(session_event& e, const probe_fn* probe, bool callbacks);
  void heartbeat(const record_ptr& r, const probe_fn* probe);
  void finish(const record_ptr& r, end_reason reason, bool callbacks);
  void notify_subscribers(session_record& r, end_reason reason);
  void finish_deliveries();
  template <class Fn, class... Args>
  void invoke(session_record& r, const Fn& fn, std::string_view what, Args... args);
  void call_hook(const std::shared_ptr<const hook_fn>& hook, std::string_view what);
  void report(std::exception_ptr e, std::string_view where) noexcept;

  struct wheel_item {
    record_ptr record;
    std::uint32_t generation;
  };

  // Configuration, fixed at construction
  const session_time interval_, timeout_, grace_;
  affine_executor* const deliver_on_;
  manual_clock* const clock_;
  const std::uint64_t id_salt_;

  mutable session_table table_;  // state() and context_of() lock its shards too
  std::atomic<std::size_t> active_{0};   // sessions not ended
  std::atomic<std::size_t> alive_{0};    // sessions whose end has not been delivered; its fall to 0 is on_idle
  std::atomic<std::uint64_t> next_id_{0};

  // What other threads hand to the manager thread, under mutex_
  std::mutex mutex_;
  std::vector<session_event> commands_;
  std::vector<shared_event> settle_waiters_;
  bool stopping_ = false, exited_ = false, kicked_ = false;
  bool own_commands_ = false;  // commands_ holds one sent by a callback on the manager thread
  parker parker_;  // where the manager thread sleeps
  std::thread thread_;
  std::atomic<std::thread::id> thread_id_{};
  std::mutex shutdown_mutex_;
  bool shut_down_ = false;  // under shutdown_mutex_

  // The manager thread's own
  timer_wheel<wheel_item> wheel_;
  std::vector<session_event> inbox_, outbox_;

  // Deliveries, under delivery_mutex_
  std::mutex delivery_mutex_;
  std::vector<session_event> deliveries_;
  std::vector<shared_event> drain_waiters_;
  bool delivering_ = false, pump_posted_ = false, executor_failed_ = false;
  std::vector<session_event> batch_;  // the runner's own

  // Handlers, under handlers_mutex_
  mutable std::mutex handlers_mutex_;
  std::shared_ptr<const probe_fn> probe_;
  std::shared_ptr<const hook_fn> first_session_, idle_;
  std::shared_ptr<const error_fn> error_handler_;
  std::vector<std::shared_ptr<end_subscriber>> subscribers_;
};

}  // namespace tether::inline v1::detail

#endif  // TETHER_DETAIL_SESSION_CORE_HPP
