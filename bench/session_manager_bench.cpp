// SPDX-License-Identifier: BSL-1.0
// session_manager at 100,000 sessions: touch() from 1, 2 and 4 threads beside a one-lock map (the usual
// hand-written monitor), open + close, and the manager thread's CPU share at the default 2 s heartbeat.
#include <tether/session_manager.hpp>

#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "brief.hpp"

namespace {

const std::size_t session_count = tether_bench::sized<std::size_t>(100'000, 10'000);

/// The peer: what a hand-written monitor keeps, every session's last touch in one map behind one mutex.
class one_lock_sessions {
public:
  void open(const std::string& id) {
    std::lock_guard lock(mutex_);
    last_touch_[id] = std::chrono::steady_clock::now();
  }
  void touch(const std::string& id) {
    std::lock_guard lock(mutex_);
    auto it = last_touch_.find(id);
    if (it != last_touch_.end()) it->second = std::chrono::steady_clock::now();
  }

private:
  std::mutex mutex_;
  std::unordered_map<std::string, std::chrono::steady_clock::time_point> last_touch_;
};

const tether::session_callbacks noop{.on_start = [](const tether::session_info&) {},
                                     .on_heartbeat = [](const tether::session_info&) {},
                                     .on_end = [](const tether::session_info&, tether::end_reason) {}};

/// 100,000 open sessions with no-op callbacks, shared by the touch benchmarks' threads. They beat every 2 s as
/// usual but never time out, since a benchmark touches them at random.
struct population {
  tether::session_manager sessions{{.timeout = std::chrono::milliseconds(0)}};
  one_lock_sessions peer;
  std::vector<std::string> ids;

  population() {
    ids.reserve(session_count);
    for (std::size_t i = 0; i < session_count; ++i) {
      ids.push_back(sessions.open(noop));
      peer.open(ids.back());
    }
    sessions.settle();
  }
};

population* shared_population = nullptr;  // made by main(), before any benchmark runs

template <class Touch>
void touch_loop(benchmark::State& state, Touch touch) {
  const auto& ids = shared_population->ids;
  std::minstd_rand random(static_cast<unsigned>(state.thread_index() + 1));
  for (auto _ : state) touch(ids[random() % ids.size()]);
  state.SetItemsProcessed(state.iterations());
}

void touch_session_manager(benchmark::State& state) {
  touch_loop(state, [](const std::string& id) { shared_population->sessions.touch(id); });
}
BENCHMARK(touch_session_manager)->Threads(1)->Threads(2)->Threads(4)->UseRealTime();

void touch_one_lock_map(benchmark::State& state) {
  touch_loop(state, [](const std::string& id) { shared_population->peer.touch(id); });
}
BENCHMARK(touch_one_lock_map)->Threads(1)->Threads(2)->Threads(4)->UseRealTime();

void open_and_close(benchmark::State& state) {
  tether::session_manager sessions;
  for (auto _ : state) sessions.close(sessions.open({}));
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(open_and_close);

/// The ids of this process's threads named `name`.
std::vector<std::string> threads_named(const std::string& name) {
  std::vector<std::string> found;
  for (const auto& task : std::filesystem::directory_iterator("/proc/self/task")) {
    std::ifstream comm(task.path() / "comm");
    std::string line;
    if (std::getline(comm, line) && line == name) found.push_back(task.path().filename().string());
  }
  return found;
}

/// Nanoseconds thread `tid` of this process has spent on a CPU (the first field of its schedstat).
std::uint64_t thread_cpu_ns(const std::string& tid) {
  std::ifstream schedstat("/proc/self/task/" + tid + "/schedstat");
  std::uint64_t ns = 0;
  schedstat >> ns;
  return ns;
}

/// The manager thread that `make` starts: the one named tether-sessions that was not there before.
template <class Make>
std::string new_manager_thread(Make make) {
  const auto before = threads_named("tether-sessions");
  make();
  for (const auto& tid : threads_named("tether-sessions"))
    if (std::find(before.begin(), before.end(), tid) == before.end()) return tid;
  return {};
}

/// The manager thread's CPU share with 100,000 sessions, default options (2 s heartbeat, 6 s timeout) and no-op
/// callbacks, while the benchmark thread touches every session once a second. Reported as a percentage of one core.
void manager_thread_cpu(benchmark::State& state) {
  std::optional<tether::session_manager> sessions_slot;
  const auto tid = new_manager_thread([&] {
    sessions_slot.emplace();
    sessions_slot->settle();  // the thread names itself when it starts; after settle() it has
  });
  auto& sessions = *sessions_slot;
  if (tid.empty()) return state.SkipWithError("cannot find the manager thread in /proc/self/task");
  std::vector<std::string> ids;
  for (std::size_t i = 0; i < session_count; ++i) ids.push_back(sessions.open(noop));
  sessions.settle();
  const auto window = std::chrono::seconds(state.range(0));
  double percent = 0;
  for (auto _ : state) {
    const auto before = thread_cpu_ns(tid);
    const auto start = std::chrono::steady_clock::now();
    for (auto next = start; next < start + window; next += std::chrono::seconds(1)) {
      for (const auto& id : ids) sessions.touch(id);
      std::this_thread::sleep_until(next + std::chrono::seconds(1));
    }
    const auto elapsed = std::chrono::steady_clock::now() - start;
    const auto used = thread_cpu_ns(tid) - before;
    percent = 100.0 * static_cast<double>(used) /
              static_cast<double>(std::chrono::duration_cast<std::chrono::nanoseconds>(elapsed).count());
  }
  state.counters["manager_cpu_percent"] = percent;
  state.counters["sessions"] = static_cast<double>(sessions.active());
}
BENCHMARK(manager_thread_cpu)->Arg(tether_bench::sized(10, 1))->Iterations(1)->Unit(benchmark::kSecond)->UseRealTime();

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  auto pop = std::make_unique<population>();
  shared_population = pop.get();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
