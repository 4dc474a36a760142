// SPDX-License-Identifier: BSL-1.0
// Wiring sessions to tasks: when a session ends, the tasks submitted with its id as their group are cancelled.
#pragma once

#include <tether/session_manager.hpp>

#include <string_view>

namespace tether::inline v1 {

/// What cancel_tasks_on_end() needs of a task manager: tether::task_manager, or a test's stand-in. This header does
/// not include task_manager.hpp (and Boost.Fiber with it): whoever holds a task_manager has included it already.
template <class Tasks>
concept cancels_task_groups = requires(Tasks& tasks, std::string_view group) { tasks.cancel_group(group); };

/// Keeps `tasks` wired to `sessions` until the returned subscription is destroyed: each session's end cancels the
/// task group named by the session's id (submit such tasks with `task_options{.group = id}`). The cancel runs where
/// the session's callbacks run, after its on_end, before its context is revoked. `tasks` must outlive the
/// subscription.
///
///     auto wiring = tether::cancel_tasks_on_end(sessions, tasks);
///     tasks.submit("report", make_report, {.group = session_id});   // cancelled when that session ends
///
/// **Thread safety:** as session_manager::subscribe_end.
template <class Tasks>
  requires cancels_task_groups<Tasks>
[[nodiscard]] session_subscription cancel_tasks_on_end(session_manager& sessions, Tasks& tasks) {
  return sessions.subscribe_end([&tasks](const session_info& s, end_reason) { tasks.cancel_group(s.id); });
}

}  // namespace tether::inline v1
