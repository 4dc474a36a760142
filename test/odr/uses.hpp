// SPDX-License-Identifier: BSL-1.0
// The two translation units of the ODR test each define one of these, using every component header-only.
#pragma once

#include <tether/tether.hpp>

#include <fmt/format.h>

#include <string>

std::string first_unit();
std::string second_unit();

/// Touches each component, so both units instantiate the same templates and inline functions.
inline std::string use_everything(const char* unit) {
  const tether::context_key<std::string> key("unit");
  tether::context_scope scope(tether::context::current().with(key, unit));

  tether::affine_executor local;
  auto answer = local.submit([&] { return *tether::context::current().get(key); });
  local.poll();

  tether::task_manager tasks(tether::task_manager::options{.workers = 1});
  const int six = tasks.submit("six", [] { return 6; }).get();

  tether::session_manager sessions;
  sessions.close(sessions.open({}));

  const tether::error e(tether::errc::timeout, "tether::odr_test: demo");
  return fmt::format("{}:{}:{}:{}", e.code().category().name(), tether::to_string(e.value()), answer.get(), six);
}
