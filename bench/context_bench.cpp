// SPDX-License-Identifier: BSL-1.0
// What carrying a context to a task costs: tether::context beside a thread_local shared_ptr swap and a map copy.
#include <tether/context.hpp>

#include <benchmark/benchmark.h>

#include <any>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <memory>
#include <new>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

// Every heap allocation in the process is counted, so each benchmark can report how many one operation makes.
namespace {
// relaxed: read only by the benchmark thread after its own loop; no other memory is published through it.
std::atomic<std::uint64_t> allocation_count{0};
}  // namespace

// noinline: inlined into callers, g++ would pair a new-expression with the free() below and warn.
[[gnu::noinline]] void* operator new(std::size_t size) {
  allocation_count.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(size ? size : 1)) return p;
  throw std::bad_alloc();
}
[[gnu::noinline]] void* operator new[](std::size_t size) { return ::operator new(size); }
[[gnu::noinline]] void operator delete(void* p) noexcept { std::free(p); }
[[gnu::noinline]] void operator delete[](void* p) noexcept { std::free(p); }
[[gnu::noinline]] void operator delete(void* p, std::size_t) noexcept { std::free(p); }
[[gnu::noinline]] void operator delete[](void* p, std::size_t) noexcept { std::free(p); }

namespace {

/// The last measured time per operation of each baseline, by name, for the tether benchmarks' ratio counters.
std::map<std::string, double>& baseline_ns() {
  static std::map<std::string, double> times;
  return times;
}

/// Runs the benchmark loop, sets the allocs_per_op counter and returns the nanoseconds per operation.
template <class Body>
double run_loop(benchmark::State& state, Body&& body) {
  const std::uint64_t allocations_before = allocation_count.load(std::memory_order_relaxed);
  const auto start = std::chrono::steady_clock::now();
  for (auto _ : state) body();
  const auto elapsed = std::chrono::steady_clock::now() - start;
  const auto allocations = allocation_count.load(std::memory_order_relaxed) - allocations_before;
  const double iterations = static_cast<double>(state.iterations());
  state.counters["allocs_per_op"] = static_cast<double>(allocations) / iterations;
  return static_cast<double>(std::chrono::duration_cast<std::chrono::nanoseconds>(elapsed).count()) / iterations;
}

/// Adds the counter `x_<baseline>`: this benchmark's time divided by the baseline's (below 1: tether is faster).
void ratio_to(benchmark::State& state, const std::string& baseline, double ns) {
  const auto found = baseline_ns().find(baseline);
  if (found != baseline_ns().end() && found->second > 0) state.counters["x_" + baseline] = ns / found->second;
}

// ---- the data every variant carries: a session's user (sensitive), session number, trace id and locale ----

const tether::context_key<std::string> user_key{"user", /*sensitive=*/true};
const tether::context_key<int> session_key{"session"};
const tether::context_key<std::string> trace_key{"trace"};
const tether::context_key<int> locale_key{"locale"};

tether::context session_context(tether::lifetime& life) {
  return life.attach(tether::context{}
                         .with(user_key, "ada")
                         .with(session_key, 42)
                         .with(trace_key, "4bf92f3577b34da6")
                         .with(locale_key, 7));
}

using any_map = std::unordered_map<std::string, std::any>;

any_map session_map() {
  return {{"user", std::string("ada")}, {"session", 42}, {"trace", std::string("4bf92f3577b34da6")}, {"locale", 7}};
}

// ---- baselines ----

/// The folly RequestContext way: the thread's context is a shared_ptr; capture copies it, install swaps it in.
thread_local std::shared_ptr<const any_map> shared_current;
/// The deep-copy way: each task gets its own copy of the map, installed by swapping it into the thread's.
thread_local any_map copied_current;

void baseline_shared_ptr_swap(benchmark::State& state) {
  shared_current = std::make_shared<const any_map>(session_map());
  baseline_ns()["shared_ptr_swap"] = run_loop(state, [] {
    std::shared_ptr<const any_map> captured = shared_current;                  // submit
    std::shared_ptr<const any_map> saved = std::exchange(shared_current, std::move(captured));  // install
    benchmark::DoNotOptimize(shared_current.get());
    shared_current = std::move(saved);                                         // restore
  });
  shared_current.reset();
}
BENCHMARK(baseline_shared_ptr_swap);

void baseline_map_copy(benchmark::State& state) {
  copied_current = session_map();
  baseline_ns()["map_copy"] = run_loop(state, [] {
    any_map captured = copied_current;            // submit: a deep copy
    std::swap(copied_current, captured);          // install
    benchmark::DoNotOptimize(copied_current.size());
    std::swap(copied_current, captured);          // restore
  });
  copied_current.clear();
}
BENCHMARK(baseline_map_copy);

void baseline_map_get(benchmark::State& state) {
  const any_map map = session_map();
  const std::string name = "locale";
  baseline_ns()["map_get"] = run_loop(state, [&] {
    const auto found = map.find(name);
    benchmark::DoNotOptimize(std::any_cast<int>(&found->second));
  });
}
BENCHMARK(baseline_map_get);

/// A map of `size` int entries, copied and one entry replaced: the deep-copy way of deriving a context.
void baseline_map_with(benchmark::State& state) {
  std::unordered_map<std::string, std::any> map;
  for (int k = 0; k < state.range(0); ++k) map.emplace("key" + std::to_string(k), k);
  const std::string last = "key" + std::to_string(state.range(0) - 1);
  baseline_ns()["map_with/" + std::to_string(state.range(0))] = run_loop(state, [&] {
    auto copy = map;
    copy[last] = 99;
    benchmark::DoNotOptimize(copy.size());
  });
}
BENCHMARK(baseline_map_with)->Arg(1)->Arg(4)->Arg(16);

// ---- tether ----

/// Submit captures context::current(); the worker installs it around the task and restores its own afterwards.
void tether_capture_install_restore(benchmark::State& state) {
  tether::lifetime life("bench");
  tether::context_scope submitter(session_context(life));
  const double ns = run_loop(state, [] {
    tether::context captured = tether::context::current();  // submit
    // The worker: install, run the task, restore. Moved in, as an executor's task runs once.
    tether::detail::invoke_in(std::move(captured),
                              [] { benchmark::DoNotOptimize(tether::detail::current_context_slot()); });
  });
  ratio_to(state, "shared_ptr_swap", ns);
  ratio_to(state, "map_copy", ns);
}
BENCHMARK(tether_capture_install_restore);

/// get of a present key, the last of four (a linear search finds it last); sensitive adds the revocation check.
void tether_get(benchmark::State& state) {
  tether::lifetime life("bench");
  const tether::context ctx = session_context(life);
  const double ns = state.range(0) ? run_loop(state, [&] { benchmark::DoNotOptimize(ctx.get(user_key)); })
                                   : run_loop(state, [&] { benchmark::DoNotOptimize(ctx.get(locale_key)); });
  state.SetLabel(state.range(0) ? "sensitive key" : "plain key");
  ratio_to(state, "map_get", ns);
}
BENCHMARK(tether_get)->ArgName("sensitive")->Arg(0)->Arg(1);

/// with() on a context of `size` keys, replacing the last one's value.
void tether_with(benchmark::State& state) {
  std::vector<tether::context_key<int>> keys;
  tether::context ctx;
  for (int k = 0; k < state.range(0); ++k) {
    keys.emplace_back("key" + std::to_string(k));
    ctx = ctx.with(keys.back(), k);
  }
  const tether::context_key<int>& last = keys.back();
  const double ns = run_loop(state, [&] { benchmark::DoNotOptimize(ctx.with(last, 99)); });
  ratio_to(state, "map_with/" + std::to_string(state.range(0)), ns);
}
BENCHMARK(tether_with)->Arg(1)->Arg(4)->Arg(16);

}  // namespace

BENCHMARK_MAIN();
