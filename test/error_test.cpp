// SPDX-License-Identifier: BSL-1.0
// tether::error, tether::errc and the category: codes, comparisons, messages and formatting.
#include <tether/error.hpp>

#include <doctest/doctest.h>

#include <set>
#include <string>
#include <system_error>

namespace {

constexpr tether::errc all_codes[] = {
    tether::errc::executor_stopped, tether::errc::abandoned,      tether::errc::timeout,
    tether::errc::would_deadlock,   tether::errc::queue_full,     tether::errc::duplicate_task,
    tether::errc::unknown_task,     tether::errc::expired_task,   tether::errc::result_type_mismatch,
    tether::errc::unknown_session,  tether::errc::context_revoked, tether::errc::invalid_argument,
};

}  // namespace

TEST_CASE("every code has its own name, and the category message is that name") {
  std::set<std::string> names;
  for (auto code : all_codes) {
    const std::string name(tether::to_string(code));
    CHECK(tether::category().message(static_cast<int>(code)) == name);
    CHECK(fmt::format("{}", code) == name);
    names.insert(name);
  }
  CHECK(names.size() == std::size(all_codes));
  CHECK(tether::to_string(tether::errc::would_deadlock) == "would_deadlock");
  CHECK(std::string(tether::category().name()) == "tether");
}

TEST_CASE("an error compares equal to its errc and to nothing else") {
  for (auto code : all_codes) {
    const tether::error e(code, "tether::test: x");
    CHECK(e.code() == code);
    CHECK(e.value() == code);
    CHECK(e.code().category() == tether::category());
    for (auto other : all_codes)
      if (other != code) CHECK(e.code() != other);
  }
  // A tether code is not confused with the generic category's value 3.
  CHECK(tether::make_error_code(tether::errc::timeout) != std::errc::no_such_process);
}

TEST_CASE("raise throws a tether::error whose message starts with the API and names the id") {
  try {
    tether::detail::raise(tether::errc::duplicate_task, "tether::task_manager::submit: task '{}' already exists",
                          "report-7");
    FAIL("raise returned");
  } catch (const tether::error& e) {
    CHECK(e.code() == tether::errc::duplicate_task);
    const std::string what = e.what();
    CHECK(what.rfind("tether::task_manager::submit: task 'report-7' already exists", 0) == 0);
  }
}

TEST_CASE("an error is a std::system_error, and a cancellation is not a tether::error") {
  CHECK_THROWS_AS(throw tether::error(tether::errc::timeout, "t"), std::system_error);
  bool caught_as_error = false;
  try {
    throw tether::task_cancelled();
  } catch (const tether::error&) {
    caught_as_error = true;
  } catch (const tether::task_cancelled& c) {
    CHECK(std::string(c.what()).find("cancelled") != std::string::npos);
  }
  CHECK_FALSE(caught_as_error);
}
