// SPDX-License-Identifier: BSL-1.0
// tether's one error type, its codes, and the cancellation signal seen inside tasks.
#pragma once

#include <tether/config.hpp>

#include <fmt/format.h>

#include <exception>
#include <string>
#include <string_view>
#include <system_error>

namespace tether::inline v1 {

/// What went wrong; every tether::error carries one of these as its std::error_code.
enum class errc {
  executor_stopped = 1,  ///< the executor or manager no longer accepts work
  abandoned,             ///< accepted, but will never run (stopped before it started)
  timeout,               ///< a deadline passed before the operation could start or finish
  would_deadlock,        ///< blocking here would close a cycle of threads waiting on each other
  queue_full,            ///< a bound on queued work was reached
  duplicate_task,        ///< a live task already has this id (on_duplicate::reject)
  unknown_task,          ///< no task ever had this id, or its record was forgotten long ago
  expired_task,          ///< the task finished and its result was evicted
  result_type_mismatch,  ///< the result was asked for, or published, as the wrong type
  unknown_session,       ///< no open session has this id
  context_revoked,       ///< a sensitive context value was read after its owner's lifetime ended
  invalid_argument,      ///< an argument was out of range or malformed
};

/// The category of tether::errc; its name is "tether".
TETHER_DECL const std::error_category& category() noexcept;

/// Makes errc usable as a std::error_code, so `e.code() == tether::errc::timeout` compares as expected.
inline std::error_code make_error_code(errc e) noexcept { return {static_cast<int>(e), category()}; }

/// The short name of a code ("timeout"), as used in messages and by the fmt formatter.
TETHER_DECL std::string_view to_string(errc) noexcept;

/// Every failure tether reports. what() starts with the API that failed and names the object or id involved:
/// "tether::task_manager::submit: task 'report-7' already exists".
/// **Thread safety:** immutable after construction.
class error : public std::system_error {
public:
  error(errc code, std::string_view what) : std::system_error(make_error_code(code), std::string(what)) {}
  /// The tether code, without going through std::error_code.
  errc value() const noexcept { return static_cast<errc>(code().value()); }
};

/// Thrown inside a task once it was asked to stop (by publish, throw_if_cancelled and this_task::sleep_for).
/// Deliberately not a tether::error, so a `catch (const tether::error&)` in user code does not swallow a cancel.
class task_cancelled : public std::exception {
public:
  const char* what() const noexcept override { return "tether: task cancelled"; }
};

namespace detail {
/// The one place tether throws its error: out of line, so call sites stay small.
[[noreturn]] TETHER_DECL void throw_error(errc code, const std::string& what);

/// Formats the message, then throws: `raise(errc::timeout, "tether::affine_executor::call_for: no start after {}", d)`.
template <class... Args>
[[noreturn]] void raise(errc code, fmt::format_string<Args...> format, Args&&... args) {
  throw_error(code, fmt::format(format, std::forward<Args>(args)...));
}
}  // namespace detail

}  // namespace tether::inline v1

template <>
struct std::is_error_code_enum<tether::errc> : std::true_type {};

/// `fmt::format("{}", tether::errc::timeout)` gives "timeout".
template <>
struct fmt::formatter<tether::errc> : fmt::formatter<std::string_view> {
  auto format(tether::errc e, fmt::format_context& ctx) const {
    return fmt::formatter<std::string_view>::format(tether::to_string(e), ctx);
  }
};

#if TETHER_HEADER_ONLY
#  include <tether/impl/error.ipp>
#endif
