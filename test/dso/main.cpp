// SPDX-License-Identifier: BSL-1.0
// Two shared objects, each with its own header-only copy of tether and hidden visibility: they must share one
// main_thread(), and a fork() must neither hang in the parent (each copy registering fork handlers that lock the
// same wait-for graph) nor leave the child without a working main_thread().
#include <cstdio>

#include <sys/wait.h>
#include <unistd.h>

extern "C" const void* plugin_first_main();
extern "C" const void* plugin_second_main();
extern "C" int plugin_first_call();
extern "C" int plugin_second_call();

int main() {
  ::alarm(60);  // a fork that hangs fails the test instead of stalling it
  const bool one_main = plugin_first_main() == plugin_second_main();
  const bool calls = plugin_first_call() == 1 && plugin_second_call() == 1;
  const pid_t child = ::fork();
  if (child == 0) {
    ::alarm(10);
    ::_exit(plugin_first_call() == 1 && plugin_second_call() == 1 ? 0 : 1);
  }
  int status = -1;
  const bool forked = child > 0 && ::waitpid(child, &status, 0) == child && WIFEXITED(status) &&
                      WEXITSTATUS(status) == 0;
  std::printf("dso: one main_thread %d, calls %d, fork %d\n", one_main, calls, forked);
  return one_main && calls && forked ? 0 : 1;
}
