// SPDX-License-Identifier: BSL-1.0
// The one include a user needs: every public tether component.
#pragma once

#include <tether/config.hpp>
#include <tether/error.hpp>
// TEMP(integration): the guards go once every component has landed.
#if __has_include(<tether/context.hpp>)
#  include <tether/context.hpp>
#endif
#if __has_include(<tether/affine_executor.hpp>)
#  include <tether/affine_executor.hpp>
#endif
#if __has_include(<tether/task_manager.hpp>)
#  include <tether/task_manager.hpp>
#endif
#if __has_include(<tether/session_manager.hpp>)
#  include <tether/session_manager.hpp>
#endif
