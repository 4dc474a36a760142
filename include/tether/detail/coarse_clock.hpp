// SPDX-License-Identifier: BSL-1.0
// The clock of result retention: monotonic, a few milliseconds coarse, and a quarter of the cost of steady_clock.
#pragma once

#include <chrono>
#include <ctime>

namespace tether::inline v1::detail {

/// CLOCK_MONOTONIC_COARSE: the time of the last timer tick. retain_for is counted in seconds, so a tick's
/// resolution (1 to 4 ms) does not matter, and it is read at the end of every task.
struct coarse_clock {
  using duration = std::chrono::nanoseconds;
  using rep = duration::rep;
  using period = duration::period;
  using time_point = std::chrono::time_point<coarse_clock>;
  static constexpr bool is_steady = true;
  static time_point now() noexcept {
    timespec ts{};
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return time_point(std::chrono::seconds(ts.tv_sec) + std::chrono::nanoseconds(ts.tv_nsec));
  }
};

}  // namespace tether::inline v1::detail
