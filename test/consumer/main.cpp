// SPDX-License-Identifier: BSL-1.0
// Uses every tether component the way an application would; built as a Meson subproject, through pkg-config and
// with a plain -I include.
#include <tether/tether.hpp>

#include <cstdio>
#include <string>

int main() {
#if TETHER_HEADER_ONLY
  const char* mode = "header-only";
#else
  const char* mode = "compiled";
#endif
  const tether::context_key<std::string> user("user");
  tether::context_scope as_alice(tether::context::current().with(user, "alice"));

  tether::task_manager tasks(tether::task_manager::options{.workers = 1});
  auto handle = tasks.submit("greet", [&] {
    // Runs on a worker fiber, under alice's context, and asks the main thread for the rest.
    return *tether::context::current().get(user) + tether::main_thread().call([] { return std::string(" on main"); });
  });
  tether::main_thread().run_one();  // serves the task's one call
  const std::string greeting = handle.get();

  tether::session_manager sessions;
  const std::string id = sessions.open({});
  const bool session_ok = sessions.active() == 1 && sessions.close(id);

  const tether::error e(tether::errc::timeout, "tether::consumer: demo");
  const bool ok = e.code() == tether::errc::timeout && greeting == "alice on main" && session_ok;
  std::printf("consumer (%s): %s\n", mode, ok ? "ok" : "FAILED");
  return ok ? 0 : 1;
}
