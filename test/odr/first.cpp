// SPDX-License-Identifier: BSL-1.0
// One of two translation units that include all of tether header-only; the link fails on a non-inline definition.
#include "uses.hpp"

std::string first_unit() { return use_everything("first"); }
