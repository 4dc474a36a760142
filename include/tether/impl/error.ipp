// SPDX-License-Identifier: BSL-1.0
// Out-of-line definitions for error.hpp.
#pragma once

#include <tether/error.hpp>

namespace tether::inline v1 {

namespace detail {
class error_category final : public std::error_category {
public:
  const char* name() const noexcept override { return "tether"; }
  std::string message(int code) const override { return std::string(to_string(static_cast<errc>(code))); }
};
}  // namespace detail

TETHER_DECL const std::error_category& category() noexcept {
  static const detail::error_category instance;
  return instance;
}

TETHER_DECL std::string_view to_string(errc e) noexcept {
  switch (e) {
    case errc::executor_stopped: return "executor_stopped";
    case errc::abandoned: return "abandoned";
    case errc::timeout: return "timeout";
    case errc::would_deadlock: return "would_deadlock";
    case errc::queue_full: return "queue_full";
    case errc::duplicate_task: return "duplicate_task";
    case errc::unknown_task: return "unknown_task";
    case errc::expired_task: return "expired_task";
    case errc::result_type_mismatch: return "result_type_mismatch";
    case errc::unknown_session: return "unknown_session";
    case errc::context_revoked: return "context_revoked";
    case errc::invalid_argument: return "invalid_argument";
  }
  return "unknown tether error";
}

namespace detail {
TETHER_DECL void throw_error(errc code, const std::string& what) { throw error(code, what); }
}  // namespace detail

}  // namespace tether::inline v1
