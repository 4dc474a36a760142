// SPDX-License-Identifier: BSL-1.0
// Links the two translation units and checks that both see the same error category object.
#include <tether/tether.hpp>

#include "uses.hpp"

#include <cstdio>

int main() {
  const bool same = first_unit() == "tether:timeout:first:6" && second_unit() == "tether:timeout:second:6";
  // Function-local statics of inline functions must be one object across translation units.
  const bool one_category = &tether::category() == &tether::make_error_code(tether::errc::abandoned).category();
  std::printf("odr: %s\n", same && one_category ? "ok" : "FAILED");
  return same && one_category ? 0 : 1;
}
