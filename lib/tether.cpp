// SPDX-License-Identifier: BSL-1.0
// The compiled library's only translation unit: every out-of-line definition, included once.
#if !defined(TETHER_SEPARATE_COMPILATION)
#  error "lib/tether.cpp builds libtether and needs TETHER_SEPARATE_COMPILATION; the Meson build defines it."
#endif

#include <tether/tether.hpp>

#include <tether/impl/error.ipp>
#include <tether/impl/wait.ipp>
#include <tether/impl/context.ipp>
#include <tether/impl/affine_executor.ipp>
#include <tether/impl/task_manager.ipp>
#include <tether/impl/session_manager.ipp>
