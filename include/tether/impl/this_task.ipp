// SPDX-License-Identifier: BSL-1.0
// Out-of-line definitions for this_task.hpp.
#pragma once

#include <tether/task_manager.hpp>
#include <tether/this_task.hpp>

#include <thread>

namespace tether::inline v1 {

namespace detail {

TETHER_DECL void sleep_in_task_until(steady_clock::time_point deadline) {
  fiber_worker* worker = fiber_worker::current();
  if (!worker) {
    std::this_thread::sleep_until(deadline);
    return;
  }
  if (task_context* task = worker->current_task()) {
    task->throw_if_cancelled();
    if (task_access::record(*task).cancelled.wait_until(deadline)) {
      scrub_fiber_stack();
      throw task_cancelled();
    }
    return;
  }
  // A fiber of a worker that is not a task (one a task started itself): still never block the thread.
  event never;
  never.wait_until(deadline);
}

}  // namespace detail

namespace this_task {

TETHER_DECL void yield() {
  if (detail::fiber_worker* worker = detail::fiber_worker::current()) worker->yield_to_others();
  else std::this_thread::yield();
}

TETHER_DECL task_context* current() noexcept {
  detail::fiber_worker* worker = detail::fiber_worker::current();
  return worker ? worker->current_task() : nullptr;
}

}  // namespace this_task
}  // namespace tether::inline v1
