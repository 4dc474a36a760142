// SPDX-License-Identifier: BSL-1.0
// What a task manager task can do to itself: sleep without holding its worker, and yield.
#pragma once

#include <tether/config.hpp>
#include <tether/detail/wait.hpp>

#include <chrono>

namespace tether::inline v1 {

class task_context;

namespace detail {
/// this_task::sleep_for's body: a fiber sleep on a worker, a thread sleep elsewhere.
TETHER_DECL void sleep_in_task_until(steady_clock::time_point deadline);
}  // namespace detail

namespace this_task {

/// In a task: suspends the task's fiber (its worker runs other tasks meanwhile) and throws task_cancelled when
/// the task is cancelled before or during the sleep, at once. Outside a task: a plain std::this_thread sleep.
template <class Rep, class Period>
void sleep_for(std::chrono::duration<Rep, Period> duration) {
  detail::sleep_in_task_until(detail::deadline_after(duration));
}

/// In a task: lets the other ready tasks of its worker, and a newly queued task, run first. Elsewhere:
/// std::this_thread::yield().
TETHER_DECL void yield();

/// The running task's context, or nullptr when the caller is not a task manager task.
TETHER_DECL task_context* current() noexcept;

}  // namespace this_task
}  // namespace tether::inline v1

#if TETHER_HEADER_ONLY
#  include <tether/impl/this_task.ipp>
#endif
