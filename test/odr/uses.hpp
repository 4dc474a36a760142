// SPDX-License-Identifier: BSL-1.0
// The two translation units of the ODR test each define one of these, using the whole public API header-only.
#pragma once

#include <string>

std::string first_unit();
std::string second_unit();
