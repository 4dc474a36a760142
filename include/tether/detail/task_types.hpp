// SPDX-License-Identifier: BSL-1.0
// The task manager's vocabulary: statuses, options, results and reports, with their fmt formatters.
#pragma once

#include <tether/config.hpp>

#include <fmt/format.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <optional>
#include <string>
#include <string_view>

namespace tether::inline v1 {

/// Where a task is in its life. Statuses only move forward: queued → running → one final status, or
/// queued → cancelled for a task cancelled before it started.
enum class task_status { queued, running, succeeded, failed, cancelled };

/// What info() knows about an id: never seen (or forgotten), a record exists, or the record was evicted.
enum class task_known { unknown, live, expired };

/// Why a task ended: the cancel request when there was one, else how its function ended.
enum class task_end { none, completed, failed, cancelled_by_user, replaced, group_cancelled, shutdown };

/// What submit() does when a task with the same id is still queued or running.
enum class on_duplicate {
  replace,  ///< cancel the live task (without waiting for it) and queue the new one under the id
  reject,   ///< throw duplicate_task
};

/// What cancel() did.
enum class cancel_outcome {
  unknown,             ///< no such task (never submitted, or evicted so long ago that its id is forgotten)
  already_finished,    ///< the task had already ended (also when its result expired); nothing changed
  removed_from_queue,  ///< the task was queued: it is now cancelled and will never start
  stop_requested,      ///< the task is running: it was asked to stop (stop_token, publish, sleep_for)
};

/// What shutdown() does with the tasks that are queued or running.
enum class shutdown_mode {
  drain,   ///< run them all to their end
  cancel,  ///< cancel the queued ones, ask the running ones to stop, and wait for them
};

/// How one task is submitted.
struct task_options {
  std::string group{};                           ///< who owns the task (e.g. a session id); groups share the pool
  on_duplicate duplicate = on_duplicate::replace;
  unsigned weight = 1;                           ///< the group's share of the pool relative to other groups (>= 1);
                                                 ///< the latest queued task of a group sets it
};

/// True for the three statuses a task ends in.
constexpr bool is_final(task_status s) noexcept { return s >= task_status::succeeded; }

namespace detail {
/// What task_result and task_info have in common: the state of one submission.
struct task_fields {
  std::string id;
  task_status status = task_status::queued;
  bool cancel_requested = false;
  double progress = 0.0;            ///< the latest progress() fraction, in [0, 1]
  std::string message;              ///< the latest progress() message
  /// Grows with every publish(), progress() and the end: equal means nothing new. It counts one submission; a new
  /// submission under the id counts from 0 again, and has another `submitted` time.
  std::uint64_t sequence = 0;
  std::exception_ptr error;         ///< what the task threw (failed tasks)
  std::string error_message;        ///< its what(), or a description when it is not a std::exception
  task_end reason = task_end::none; ///< none while the task has not ended
  /// Wall-clock times, zero when it has not happened; submitted <= started <= finished. A worker that goes straight
  /// on from one task to the next reads the clock once for both: the end of the one is the start of the other, which
  /// then reads as running while the worker finishes the first one's bookkeeping (see docs/task_manager.md).
  std::chrono::system_clock::time_point submitted, started, finished;
};
}  // namespace detail

/// A snapshot of one task with its latest value (published or returned). task_result<void> has no value.
template <class R>
struct task_result : detail::task_fields {
  std::optional<R> value;
};

template <>
struct task_result<void> : detail::task_fields {};

/// The untyped view of a task: task_result without the value, plus its group and whether the id is known.
struct task_info : detail::task_fields {
  std::string group;
  task_known known = task_known::unknown;
};

/// What shutdown() did with the tasks that were queued or running when it was called.
struct shutdown_report {
  std::size_t completed = 0;               ///< ran to their end (succeeded or failed, or ignored the stop request)
  std::size_t cancelled_before_start = 0;  ///< were queued and never started
  std::size_t stopped_while_running = 0;   ///< were running and ended cancelled
};

/// Short names ("queued", "stop_requested"), as printed by the fmt formatters.
TETHER_DECL std::string_view to_string(task_status) noexcept;
TETHER_DECL std::string_view to_string(task_known) noexcept;
TETHER_DECL std::string_view to_string(task_end) noexcept;
TETHER_DECL std::string_view to_string(on_duplicate) noexcept;
TETHER_DECL std::string_view to_string(cancel_outcome) noexcept;
TETHER_DECL std::string_view to_string(shutdown_mode) noexcept;

namespace detail {
/// Formats a task manager enum by its short name.
template <class Enum>
struct enum_name_formatter : fmt::formatter<std::string_view> {
  auto format(Enum e, fmt::format_context& ctx) const {
    return fmt::formatter<std::string_view>::format(tether::to_string(e), ctx);
  }
};
}  // namespace detail

}  // namespace tether::inline v1

template <>
struct fmt::formatter<tether::task_status> : tether::detail::enum_name_formatter<tether::task_status> {};
template <>
struct fmt::formatter<tether::task_known> : tether::detail::enum_name_formatter<tether::task_known> {};
template <>
struct fmt::formatter<tether::task_end> : tether::detail::enum_name_formatter<tether::task_end> {};
template <>
struct fmt::formatter<tether::on_duplicate> : tether::detail::enum_name_formatter<tether::on_duplicate> {};
template <>
struct fmt::formatter<tether::cancel_outcome> : tether::detail::enum_name_formatter<tether::cancel_outcome> {};
template <>
struct fmt::formatter<tether::shutdown_mode> : tether::detail::enum_name_formatter<tether::shutdown_mode> {};

#if TETHER_HEADER_ONLY
#  include <tether/impl/task_types.ipp>
#endif
