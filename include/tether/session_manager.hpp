// SPDX-License-Identifier: BSL-1.0
// Sessions: start, heartbeat and end callbacks for many clients, with disconnect grace and injectable time.
#pragma once

#include <tether/config.hpp>
#include <tether/context.hpp>
#include <tether/error.hpp>
#include <tether/manual_clock.hpp>

#include <fmt/format.h>

#include <chrono>
#include <cstddef>
#include <exception>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

namespace tether::inline v1 {

class affine_executor;

namespace detail {
class session_core;
struct end_subscriber;
}  // namespace detail

/// Why a session ended.
enum class end_reason {
  closed,        ///< session_manager::close()
  expired,       ///< no touch for `timeout`, then none for `grace`
  probe_failed,  ///< the probe said the session is gone
  shutdown,      ///< the manager shut down or was destroyed
};

/// Where a session is. `disconnected`: not touched for `timeout`; no heartbeats, still counted by active(), and a
/// touch within `grace` makes it active again without an end.
enum class session_state { active, disconnected, ended };

/// "closed", "expired", ...; also what fmt prints.
TETHER_DECL std::string_view to_string(end_reason) noexcept;
/// "active", "disconnected", "ended"; also what fmt prints.
TETHER_DECL std::string_view to_string(session_state) noexcept;

/// What a callback learns about its session. `ctx` is the session's context (revoked once the session has ended);
/// times are on the manager's clock.
struct session_info {
  std::string id;
  context ctx;
  std::chrono::steady_clock::time_point opened, last_touch;
};

/// A session's callbacks; any of them may be empty. Per session they run one at a time and in order: on_start, then
/// every on_heartbeat, then on_end exactly once. The session's context is installed while they run.
struct session_callbacks {
  // The `{}` lets designated initializers name only some callbacks without -Wmissing-field-initializers.
  std::function<void(const session_info&)> on_start{}, on_heartbeat{};
  std::function<void(const session_info&, end_reason)> on_end{};  ///< the context is revoked right after it returns
};

/// Keeps an end subscription (session_manager::subscribe_end) alive; destroying it, or reset(), unsubscribes and
/// waits until a call of the subscriber that is running on another thread has returned.
/// **Thread safety:** distinct objects: safe; one object: not from two threads at once.
class session_subscription {
public:
  session_subscription() noexcept = default;
  session_subscription(session_subscription&&) noexcept = default;
  TETHER_DECL session_subscription& operator=(session_subscription&&) noexcept;
  ~session_subscription() { reset(); }

  /// Unsubscribes now; afterwards the subscriber is never called again.
  TETHER_DECL void reset() noexcept;
  explicit operator bool() const noexcept { return static_cast<bool>(subscriber_); }

private:
  friend class session_manager;
  session_subscription(std::weak_ptr<detail::session_core> core, std::shared_ptr<detail::end_subscriber> s) noexcept
      : core_(std::move(core)), subscriber_(std::move(s)) {}

  std::weak_ptr<detail::session_core> core_;
  std::shared_ptr<detail::end_subscriber> subscriber_;
};

/// Tracks client sessions and tells the application when one starts, is alive, and ends.
///
/// A client session is opened, kept alive by `touch()` (a liveness signal: a request, a websocket ping), and ends by
/// `close()`, by expiry (no touch for `timeout`, then none for `grace`), by a failed probe, or at shutdown. One
/// manager thread, started by the constructor, watches every session: per session a timer-wheel entry, so a
/// session costs nothing until something about it falls due, and `touch()` is an atomic store under one of many
/// shard locks. Callbacks run on that thread, or on `deliver_on`, never under the manager's locks; they may call
/// back into the manager (open, close, touch, state) freely.
///
///     tether::session_manager sessions({.timeout = 30s, .grace = 120s});
///     auto id = sessions.open({.on_end = [](const tether::session_info& s, tether::end_reason r) {
///       fmt::print("{} ended: {}\n", s.id, r);
///     }});
///     sessions.touch(id);                       // on every request of that client
///
/// **Thread safety:** every member from any thread, also from the callbacks (except settle(), shutdown() and the
/// destructor, which wait for the manager thread and so must not run on it).
class session_manager {
public:
  struct options {
    /// How often on_heartbeat (and the probe) runs for an active session; must be positive.
    std::chrono::milliseconds heartbeat_interval{2000};
    /// No touch for this long: the session is disconnected. Zero: sessions never time out.
    std::chrono::milliseconds timeout{6000};
    /// How long a disconnected session may come back before it ends as `expired`. Zero: it ends at once.
    std::chrono::milliseconds grace{0};
    /// Where callbacks run: nullptr for the manager's own thread, or an executor (e.g. &tether::main_thread()).
    /// It must outlive the manager.
    affine_executor* deliver_on = nullptr;
    /// Time source for tests; nullptr for std::chrono::steady_clock. It must outlive the manager.
    manual_clock* clock = nullptr;
  };

  /// Starts the manager thread. A negative or zero interval, or a negative timeout or grace, throws invalid_argument.
  TETHER_DECL session_manager();
  TETHER_DECL explicit session_manager(options);
  session_manager(const session_manager&) = delete;
  session_manager& operator=(const session_manager&) = delete;
  /// shutdown(): every open session ends with `shutdown`, its on_end runs, and the manager thread is joined.
  TETHER_DECL ~session_manager();

  /// Opens a session and returns its id (a fresh unique one when `id` is empty). The session's context derives
  /// from the caller's current one. on_start runs asynchronously. An id that is still in use (open, or ended with
  /// its on_end not yet returned) throws invalid_argument; after shutdown, executor_stopped.
  TETHER_DECL std::string open(session_callbacks callbacks, std::string id = {});
  /// A liveness signal: the session is not idle now. Resumes a disconnected session. Unknown or ended: unknown_session.
  TETHER_DECL void touch(std::string_view id);
  /// touch() that returns false instead of throwing unknown_session.
  TETHER_DECL bool try_touch(std::string_view id);
  /// Ends the session with `closed` (on_end runs asynchronously); false when it is unknown or has already ended.
  TETHER_DECL bool close(std::string_view id);
  /// An ended id reads `ended` at least until its on_end has returned, then unknown_session.
  TETHER_DECL session_state state(std::string_view id) const;
  /// The session's context; unknown_session when there is no such session.
  TETHER_DECL context context_of(std::string_view id) const;
  /// Sessions that have not ended (active or disconnected).
  TETHER_DECL std::size_t active() const noexcept;

  /// Asks the application, once per heartbeat tick of each active session and just before its on_heartbeat, whether
  /// the session is still alive; false ends it with `probe_failed`. A probe that throws is reported and counts as
  /// alive.
  TETHER_DECL void set_probe(std::function<bool(std::string_view id)> probe);
  /// Runs on every transition from no session to one (before that session's on_start).
  TETHER_DECL void on_first_session(std::function<void()> fn);
  /// Runs when the last session has ended (after its on_end), e.g. to shut a service down.
  TETHER_DECL void on_idle(std::function<void()> fn);
  /// Receives what a callback (or the probe) threw, with a description such as
  /// "tether::session_manager: on_end of session 'a1'". Default: print both to stderr. The manager carries on.
  TETHER_DECL void set_error_handler(std::function<void(std::exception_ptr, std::string_view where)> handler);

  /// Calls `fn` for every session end, after that session's on_end and before its context is revoked, where the
  /// callbacks run. The manager must outlive the subscription or reset it first.
  [[nodiscard]] TETHER_DECL session_subscription subscribe_end(
      std::function<void(const session_info&, end_reason)> fn);

  /// Waits until the manager thread has handled everything submitted before the call and everything due at the
  /// clock's current time: callbacks have run, or have been handed to `deliver_on`. For tests; manual_clock::advance()
  /// does it. On the manager thread it throws would_deadlock.
  TETHER_DECL void settle();
  /// Ends every open session with `shutdown`, runs their on_end, and joins the manager thread; later opens throw
  /// executor_stopped. With `deliver_on`, waits until the executor has run those callbacks (or has dropped them because
  /// it stopped); on the executor's own thread it runs them itself. Idempotent.
  TETHER_DECL void shutdown();

private:
  std::shared_ptr<detail::session_core> core_;
};

}  // namespace tether::inline v1

/// `fmt::format("{}", tether::end_reason::expired)` gives "expired".
template <>
struct fmt::formatter<tether::end_reason> : fmt::formatter<std::string_view> {
  auto format(tether::end_reason r, fmt::format_context& ctx) const {
    return fmt::formatter<std::string_view>::format(tether::to_string(r), ctx);
  }
};

/// `fmt::format("{}", tether::session_state::active)` gives "active".
template <>
struct fmt::formatter<tether::session_state> : fmt::formatter<std::string_view> {
  auto format(tether::session_state s, fmt::format_context& ctx) const {
    return fmt::formatter<std::string_view>::format(tether::to_string(s), ctx);
  }
};

#if TETHER_HEADER_ONLY
#  include <tether/impl/session_manager.ipp>
#endif
