// SPDX-License-Identifier: BSL-1.0
// A shared object with its own header-only copy of tether, built with -fvisibility=hidden; built twice, as
// plugin_first and plugin_second (PLUGIN names its two functions).
#include <tether/tether.hpp>

#define PLUGIN_JOIN2(a, b) plugin_##a##_##b
#define PLUGIN_JOIN(a, b) PLUGIN_JOIN2(a, b)
#define PLUGIN_EXPORT extern "C" __attribute__((visibility("default")))

/// This copy's main_thread().
PLUGIN_EXPORT const void* PLUGIN_JOIN(PLUGIN, main)() { return &tether::main_thread(); }

/// A call on main_thread() through this copy: 1 when it ran.
PLUGIN_EXPORT int PLUGIN_JOIN(PLUGIN, call)() { return tether::main_thread().call([] { return 1; }); }
