// SPDX-License-Identifier: BSL-1.0
// A test helper: which tether::errc a call threw.
#pragma once

#include <tether/error.hpp>

#include <optional>

namespace tether_test {

/// The code of a tether::error thrown by `fn`, or nothing when it returns or throws something else.
template <class Fn>
std::optional<tether::errc> error_of(Fn&& fn) {
  try {
    fn();
  } catch (const tether::error& e) {
    return e.value();
  } catch (...) {
  }
  return std::nullopt;
}

}  // namespace tether_test
