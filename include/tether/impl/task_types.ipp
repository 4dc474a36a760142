// SPDX-License-Identifier: BSL-1.0
// Out-of-line definitions for detail/task_types.hpp: the names of the task manager's enums.
#pragma once

#include <tether/detail/task_types.hpp>

namespace tether::inline v1 {

TETHER_DECL std::string_view to_string(task_status s) noexcept {
  switch (s) {
    case task_status::queued: return "queued";
    case task_status::running: return "running";
    case task_status::succeeded: return "succeeded";
    case task_status::failed: return "failed";
    case task_status::cancelled: return "cancelled";
  }
  return "unknown task_status";
}

TETHER_DECL std::string_view to_string(task_known k) noexcept {
  switch (k) {
    case task_known::unknown: return "unknown";
    case task_known::live: return "live";
    case task_known::expired: return "expired";
  }
  return "unknown task_known";
}

TETHER_DECL std::string_view to_string(task_end e) noexcept {
  switch (e) {
    case task_end::none: return "none";
    case task_end::completed: return "completed";
    case task_end::failed: return "failed";
    case task_end::cancelled_by_user: return "cancelled_by_user";
    case task_end::replaced: return "replaced";
    case task_end::group_cancelled: return "group_cancelled";
    case task_end::shutdown: return "shutdown";
  }
  return "unknown task_end";
}

TETHER_DECL std::string_view to_string(on_duplicate d) noexcept {
  switch (d) {
    case on_duplicate::replace: return "replace";
    case on_duplicate::reject: return "reject";
  }
  return "unknown on_duplicate";
}

TETHER_DECL std::string_view to_string(cancel_outcome c) noexcept {
  switch (c) {
    case cancel_outcome::unknown: return "unknown";
    case cancel_outcome::already_finished: return "already_finished";
    case cancel_outcome::removed_from_queue: return "removed_from_queue";
    case cancel_outcome::stop_requested: return "stop_requested";
  }
  return "unknown cancel_outcome";
}

TETHER_DECL std::string_view to_string(shutdown_mode m) noexcept {
  switch (m) {
    case shutdown_mode::drain: return "drain";
    case shutdown_mode::cancel: return "cancel";
  }
  return "unknown shutdown_mode";
}

}  // namespace tether::inline v1
