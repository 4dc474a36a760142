// SPDX-License-Identifier: BSL-1.0
// How big a benchmark run is: full size to measure, or brief when the test command only checks that it still runs.
#pragma once

#include <cstdlib>

namespace tether_bench {

/// True when TETHER_BENCH_BRIEF is set (bench/meson.build sets it for `meson test --benchmark`): the run only has
/// to prove that every benchmark and every peer still works, so fixed sizes shrink. Never set it to measure.
inline bool brief() noexcept {
  static const bool set = std::getenv("TETHER_BENCH_BRIEF") != nullptr;
  return set;
}

/// `full`, or `small` in a brief run.
template <class T>
T sized(T full, T small) noexcept {
  return brief() ? small : full;
}

}  // namespace tether_bench
