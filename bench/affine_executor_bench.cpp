// SPDX-License-Identifier: BSL-1.0
// affine_executor hand-off latency, p50 and p99, beside its floors (spin polling, mutex + condvar) and its peers
// (Boost.Asio io_context, libuv uv_async_send, GLib g_main_context_invoke, moodycamel BlockingConcurrentQueue), with
// the owner awake and parked.
#include <tether/affine_executor.hpp>

#include <benchmark/benchmark.h>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/use_future.hpp>
#include <concurrentqueue/blockingconcurrentqueue.h>
#include <glib.h>
#include <uv.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <future>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "brief.hpp"

namespace {

using clock_type = std::chrono::steady_clock;
using namespace std::chrono_literals;

/// Before each operation of a "parked" run the caller sleeps this long, so every owner has gone to sleep in the
/// kernel (tether's owner spins 20 µs first; the others sleep at once).
constexpr auto park_gap = 300us;

std::int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(clock_type::now().time_since_epoch()).count();
}

// ---- the peers: each starts its owner thread in the constructor and stops it in the destructor ---------------

/// A call for the peers without a reply channel of their own: posts `fn`, then spins until its answer is there.
template <class Peer>
int call_spinning(Peer& peer, int (*fn)()) {
  std::atomic<int> answer{-1};
  peer.post([&answer, fn] { answer.store(fn(), std::memory_order_release); });
  int got;
  while ((got = answer.load(std::memory_order_acquire)) < 0) tether::detail::spin_pause();
  return got;
}

/// The spin floor: one slot, the owner polls it without ever sleeping, the caller polls for the answer.
class spin_peer {
public:
  spin_peer() : owner_([this] { loop(); }) {}
  ~spin_peer() {
    quit_.store(true, std::memory_order_release);
    owner_.join();
  }
  void post(std::function<void()> fn) {
    while (full_.load(std::memory_order_acquire)) tether::detail::spin_pause();
    pending_ = std::move(fn);
    full_.store(true, std::memory_order_release);
  }
  int call(int (*fn)()) { return call_spinning(*this, fn); }

private:
  void loop() {
    while (!quit_.load(std::memory_order_acquire)) {
      if (!full_.load(std::memory_order_acquire)) {
        tether::detail::spin_pause();
        continue;
      }
      pending_();
      pending_ = nullptr;
      full_.store(false, std::memory_order_release);
    }
  }
  std::function<void()> pending_;
  std::atomic<bool> full_{false}, quit_{false};
  std::thread owner_;
};

/// The condvar floor: a locked queue, the owner sleeps on a condition variable; answers come back the same way.
class condvar_peer {
public:
  condvar_peer() : owner_([this] { loop(); }) {}
  ~condvar_peer() {
    post({});
    owner_.join();
  }
  void post(std::function<void()> fn) {
    {
      std::lock_guard lock(mutex_);
      queue_.push_back(std::move(fn));
    }
    wake_.notify_one();
  }
  int call(int (*fn)()) {
    struct reply {
      std::mutex mutex;
      std::condition_variable ready;
      int value = -1;
    } r;
    post([&r, fn] {
      const int v = fn();
      std::lock_guard lock(r.mutex);
      r.value = v;
      r.ready.notify_one();
    });
    std::unique_lock lock(r.mutex);
    r.ready.wait(lock, [&] { return r.value >= 0; });
    return r.value;
  }

private:
  void loop() {
    for (;;) {
      std::unique_lock lock(mutex_);
      wake_.wait(lock, [&] { return !queue_.empty(); });
      std::function<void()> fn = std::move(queue_.front());
      queue_.pop_front();
      lock.unlock();
      if (!fn) return;  // the destructor's empty function
      fn();
    }
  }
  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::function<void()>> queue_;
  std::thread owner_;
};

/// moodycamel's BlockingConcurrentQueue, the MPMC queue tether first used for this hand-off: the owner waits in
/// wait_dequeue() (it spins briefly, then sleeps on a semaphore); the caller spins for the answer, as for spin_peer.
class moodycamel_peer {
public:
  moodycamel_peer() : owner_([this] { loop(); }) {}
  ~moodycamel_peer() {
    queue_.enqueue({});
    owner_.join();
  }
  void post(std::function<void()> fn) { queue_.enqueue(std::move(fn)); }
  int call(int (*fn)()) { return call_spinning(*this, fn); }

private:
  void loop() {
    std::function<void()> fn;
    for (;;) {
      queue_.wait_dequeue(fn);
      if (!fn) return;  // the destructor's empty function
      fn();
    }
  }
  moodycamel::BlockingConcurrentQueue<std::function<void()>> queue_;
  std::thread owner_;
};

/// tether: the owner runs affine_executor::run().
class tether_peer {
public:
  tether_peer() : owner_([this] { ex_.run(); }) {}
  ~tether_peer() {
    ex_.stop();
    owner_.join();
  }
  void post(std::function<void()> fn) { ex_.post(std::move(fn)); }
  int call(int (*fn)()) { return ex_.call(fn); }

private:
  tether::affine_executor ex_{"bench"};
  std::thread owner_;
};

/// Boost.Asio: the owner runs io_context::run(); calls wait on use_future.
class asio_peer {
public:
  asio_peer() : owner_([this] { io_.run(); }) {}
  ~asio_peer() {
    guard_.reset();
    owner_.join();
  }
  void post(std::function<void()> fn) { boost::asio::post(io_, std::move(fn)); }
  int call(int (*fn)()) { return boost::asio::post(io_, boost::asio::use_future(fn)).get(); }

private:
  boost::asio::io_context io_{1};
  boost::asio::executor_work_guard<boost::asio::io_context::executor_type> guard_{io_.get_executor()};
  std::thread owner_;
};

/// libuv: a locked queue plus uv_async_send; the owner runs uv_run(). Calls wait on a std::future.
class uv_peer {
public:
  uv_peer() {
    uv_loop_init(&loop_);
    uv_async_init(&loop_, &async_, [](uv_async_t* handle) { static_cast<uv_peer*>(handle->data)->drain(); });
    async_.data = this;
    owner_ = std::thread([this] { uv_run(&loop_, UV_RUN_DEFAULT); });
  }
  ~uv_peer() {
    quit_.store(true, std::memory_order_release);
    uv_async_send(&async_);
    owner_.join();
    uv_loop_close(&loop_);
  }
  void post(std::function<void()> fn) {
    {
      std::lock_guard lock(mutex_);
      queue_.push_back(std::move(fn));
    }
    uv_async_send(&async_);
  }
  int call(int (*fn)()) {
    std::promise<int> answer;
    auto future = answer.get_future();
    post([&answer, fn] { answer.set_value(fn()); });
    return future.get();
  }

private:
  void drain() {
    std::deque<std::function<void()>> batch;
    {
      std::lock_guard lock(mutex_);
      batch.swap(queue_);
    }
    for (auto& fn : batch) fn();
    if (quit_.load(std::memory_order_acquire)) uv_close(reinterpret_cast<uv_handle_t*>(&async_), nullptr);
  }
  uv_loop_t loop_{};
  uv_async_t async_{};
  std::mutex mutex_;
  std::deque<std::function<void()>> queue_;
  std::atomic<bool> quit_{false};
  std::thread owner_;
};

/// GLib: the owner runs a GMainLoop on its own GMainContext; work arrives through g_main_context_invoke.
class glib_peer {
public:
  glib_peer() : context_(g_main_context_new()), loop_(g_main_loop_new(context_, FALSE)) {
    std::promise<void> running;
    owner_ = std::thread([this, &running] {
      g_main_context_push_thread_default(context_);
      g_main_context_invoke(context_, [](gpointer p) -> gboolean {
        static_cast<std::promise<void>*>(p)->set_value();
        return G_SOURCE_REMOVE;
      }, &running);
      g_main_loop_run(loop_);
      g_main_context_pop_thread_default(context_);
    });
    running.get_future().wait();  // the loop owns the context now, so invoke never runs inline on the caller
  }
  ~glib_peer() {
    g_main_loop_quit(loop_);
    owner_.join();
    g_main_loop_unref(loop_);
    g_main_context_unref(context_);
  }
  void post(std::function<void()> fn) {
    g_main_context_invoke(context_, [](gpointer p) -> gboolean {
      auto* owned = static_cast<std::function<void()>*>(p);
      (*owned)();
      delete owned;
      return G_SOURCE_REMOVE;
    }, new std::function<void()>(std::move(fn)));
  }
  int call(int (*fn)()) {
    std::promise<int> answer;
    auto future = answer.get_future();
    post([&answer, fn] { answer.set_value(fn()); });
    return future.get();
  }

private:
  GMainContext* context_;
  GMainLoop* loop_;
  std::thread owner_;
};

// ---- measuring ---------------------------------------------------------------------------------------------------

/// p50 of the floors measured earlier in this run, by "round_trip/awake" and so on: the ratios' denominators.
std::map<std::string, double>& floors() {
  static std::map<std::string, double> values;
  return values;
}

/// Sorts the samples and reports p50 and p99 (ns) and the ratios to the floors of the same kind.
void report(benchmark::State& state, std::vector<double>& samples, const std::string& kind, const char* peer) {
  std::sort(samples.begin(), samples.end());
  const double p50 = samples[samples.size() / 2];
  const double p99 = samples[samples.size() * 99 / 100];
  state.counters["p50_ns"] = p50;
  state.counters["p99_ns"] = p99;
  if (std::string(peer) == "spin" || std::string(peer) == "condvar") floors()[kind + "/" + peer] = p50;
  for (const char* floor : {"spin", "condvar"}) {
    const auto it = floors().find(kind + "/" + floor);
    if (it != floors().end() && it->second > 0) state.counters[std::string("p50_vs_") + floor] = p50 / it->second;
  }
}

int answer() { return 1; }

/// `call` from another thread until the answer is back.
template <class Peer>
void round_trip(benchmark::State& state, const char* peer, bool parked) {
  Peer target;
  std::vector<double> samples;
  samples.reserve(static_cast<std::size_t>(state.max_iterations));
  for (auto _ : state) {
    if (parked) std::this_thread::sleep_for(park_gap);
    const auto begin = clock_type::now();
    benchmark::DoNotOptimize(target.call(&answer));
    const std::chrono::duration<double> took = clock_type::now() - begin;
    state.SetIterationTime(took.count());
    samples.push_back(took.count() * 1e9);
  }
  report(state, samples, parked ? "round_trip/parked" : "round_trip/awake", peer);
}

/// From post() to the function's first instruction on the owner thread.
template <class Peer>
void one_way(benchmark::State& state, const char* peer, bool parked) {
  Peer target;
  std::atomic<std::int64_t> started{0};
  std::vector<double> samples;
  samples.reserve(static_cast<std::size_t>(state.max_iterations));
  for (auto _ : state) {
    if (parked) std::this_thread::sleep_for(park_gap);
    started.store(0, std::memory_order_relaxed);  // relaxed: the owner writes it only after the post below
    const std::int64_t begin = now_ns();
    target.post([&started] { started.store(now_ns(), std::memory_order_release); });
    std::int64_t at;
    while ((at = started.load(std::memory_order_acquire)) == 0) tether::detail::spin_pause();
    const double took = static_cast<double>(at - begin);
    state.SetIterationTime(took * 1e-9);
    samples.push_back(took);
  }
  report(state, samples, parked ? "one_way/parked" : "one_way/awake", peer);
}

const benchmark::IterationCount awake_iterations = tether_bench::sized<benchmark::IterationCount>(20'000, 1'000);
const benchmark::IterationCount parked_iterations = tether_bench::sized<benchmark::IterationCount>(2'000, 100);

/// Registers the four runs of one peer; floors first, so the ratios of the others can refer to them.
template <class Peer>
void register_peer(const char* peer) {
  for (bool parked : {false, true}) {
    const std::string mode = parked ? "parked" : "awake";
    const auto iterations = parked ? parked_iterations : awake_iterations;
    benchmark::RegisterBenchmark(("round_trip/" + mode + "/" + peer).c_str(), [=](benchmark::State& s) {
      round_trip<Peer>(s, peer, parked);
    })->Iterations(iterations)->UseManualTime()->Unit(benchmark::kMicrosecond);
    benchmark::RegisterBenchmark(("one_way/" + mode + "/" + peer).c_str(), [=](benchmark::State& s) {
      one_way<Peer>(s, peer, parked);
    })->Iterations(iterations)->UseManualTime()->Unit(benchmark::kMicrosecond);
  }
}

}  // namespace

int main(int argc, char** argv) {
  register_peer<spin_peer>("spin");
  register_peer<condvar_peer>("condvar");
  register_peer<tether_peer>("tether");
  register_peer<moodycamel_peer>("moodycamel");
  register_peer<asio_peer>("asio");
  register_peer<uv_peer>("libuv");
  register_peer<glib_peer>("glib");
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
