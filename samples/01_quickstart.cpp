// SPDX-License-Identifier: BSL-1.0
// Quickstart: two users' sessions submit keyed tasks to one shared pool; every task sees its own user's context,
// calls a thread-affine "runtime" through the main thread, and reports progress; closing a session cancels its work.
#include <tether/tether.hpp>

#include <fmt/format.h>

#include <atomic>
#include <future>
#include <string>
#include <thread>
#include <vector>

namespace {

using namespace std::chrono_literals;

const tether::context_key<std::string> user_key("user");

/// Stands in for an embedded runtime (Julia, CPython, a GUI toolkit) that only its owner thread may call.
int runtime_square(int x) {
  if (!tether::main_thread().on_owner_thread()) throw std::logic_error("runtime called off the main thread");
  return x * x;
}

/// A report for one user: progress, a call into the runtime, a result that names the user it was made for.
std::string make_report(tether::task_context& task, int n) {
  for (int step = 1; step <= 4; ++step) {
    tether::this_task::sleep_for(10ms);  // waits without holding a worker thread
    task.progress(step / 4.0, fmt::format("step {} of 4", step));
  }
  const int squared = tether::main_thread().call([n] { return runtime_square(n); });
  return fmt::format("{}'s report: {}^2 = {}", *tether::context::current().get(user_key), n, squared);
}

/// A task that would run for a minute unless its session ends first.
void long_job(tether::task_context& task) {
  for (;;) tether::this_task::sleep_for(1s);  // throws task_cancelled once cancelled
  (void)task;
}

}  // namespace

int main() {
  tether::task_manager tasks(tether::task_manager::options{.workers = 2});
  tether::session_manager sessions;
  auto wiring = tether::cancel_tasks_on_end(sessions, tasks);
  std::atomic<int> ended{0};
  std::promise<void> nobody_left;
  sessions.on_idle([&] { nobody_left.set_value(); });  // the last session ended: a service could stop here

  std::string ids[2];
  const char* users[2] = {"alice", "bob"};
  std::vector<tether::task_handle<std::string>> reports;
  for (int u = 0; u < 2; ++u) {
    // The session's context is what is current at open(): everything done for this user derives from it.
    tether::context_scope as_user(tether::context::current().with(user_key, users[u]));
    ids[u] = sessions.open({.on_end = [&](const tether::session_info& s, tether::end_reason why) {
      fmt::print("session of {} ended: {}\n", *s.ctx.get(user_key), why);
      ++ended;
    }});
    tether::context_scope in_session(sessions.context_of(ids[u]));
    for (int n = 1; n <= 2; ++n)
      reports.push_back(tasks.submit(fmt::format("{}-report-{}", users[u], n),
                                     [n, u](tether::task_context& t) { return make_report(t, n + 10 * (u + 1)); },
                                     {.group = ids[u]}));
    tasks.submit(fmt::format("{}-long-job", users[u]), long_job, {.group = ids[u]});
  }

  // The main thread serves runtime calls until a helper thread says every report is done.
  bool reports_done = false;
  std::thread watcher([&] {
    for (auto& report : reports) report.wait();
    tether::main_thread().post([&] { reports_done = true; });  // runs on main: no lock needed
  });
  tether::main_thread().run_until([&] { return reports_done; });
  watcher.join();

  int good = 0;
  for (auto* user : users)
    for (int n = 1; n <= 2; ++n) {
      const auto id = fmt::format("{}-report-{}", user, n);
      const auto result = tasks.get_result<std::string>(id);
      fmt::print("{}: {} ({}, {} updates) {}\n", id, result->status, result->message, result->sequence,
                 result->value.value_or(result->error_message));
      good += result->status == tether::task_status::succeeded && result->value->starts_with(user);
    }

  // Closing a session ends it: its long job is cancelled, and its context is revoked.
  for (const auto& id : ids) sessions.close(id);
  nobody_left.get_future().wait();
  int cancelled = 0;
  for (auto* user : users) {
    const auto id = fmt::format("{}-long-job", user);
    const auto status = tasks.wait(id, 10s);
    fmt::print("{}: {} ({})\n", id, status, tasks.info(id).reason);
    cancelled += status == tether::task_status::cancelled;
  }
  const bool ok = good == 4 && cancelled == 2 && ended == 2;
  fmt::print("quickstart: {} of 4 reports made for the right user, {} of 2 long jobs cancelled, {} sessions ended: {}\n",
             good, cancelled, ended.load(), ok ? "ok" : "FAILED");
  return ok ? 0 : 1;
}
