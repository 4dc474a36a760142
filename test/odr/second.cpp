// SPDX-License-Identifier: BSL-1.0
// One of two translation units that include all of tether header-only; the link fails on a non-inline definition.
#include <tether/tether.hpp>

#include "uses.hpp"

std::string second_unit() {
  const tether::error e(tether::errc::timeout, "tether::odr_test: second");
  return fmt::format("{}:{}", e.code().category().name(), tether::to_string(e.value()));
}
