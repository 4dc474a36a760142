// SPDX-License-Identifier: BSL-1.0
// The one include a user needs: every public tether component.
#pragma once

#include <tether/config.hpp>
#include <tether/error.hpp>
#include <tether/context.hpp>
#include <tether/affine_executor.hpp>
#include <tether/task_manager.hpp>
#include <tether/session_manager.hpp>
#include <tether/session_tasks.hpp>
