// SPDX-License-Identifier: BSL-1.0
// How far apart the host has put two of our CPUs right now: one cache line's round trip between them.
#pragma once

#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <thread>
#include <vector>

namespace tether_bench {

/// The median time, in ns, for one cache line to go to another CPU and back, with one thread pinned to each of
/// the first two CPUs this process may use; 0 with fewer than two. On the 2-vCPU VMs we measure on it is 80-130
/// ns most of the time and 300-430 ns for spells of seconds to minutes, when the host runs the two vCPUs far
/// apart; every figure that moves lines between threads (a task queue's most of all) is then far slower, so the
/// paired benchmarks report it beside their ratios.
inline double line_round_trip_ns() {
  cpu_set_t allowed;
  if (sched_getaffinity(0, sizeof allowed, &allowed) != 0 || CPU_COUNT(&allowed) < 2) return 0;
  int cpus[2], found = 0;
  for (int c = 0; c < CPU_SETSIZE && found < 2; ++c)
    if (CPU_ISSET(c, &allowed)) cpus[found++] = c;
  const auto pin = [](int cpu) {
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(cpu, &one);
    pthread_setaffinity_np(pthread_self(), sizeof one, &one);
  };
  constexpr int rounds = 11, trips = 5'000;
  // The ball is odd on its way out and even on its way back; -1 tells the echo to stop.
  alignas(64) std::atomic<long> ball{0};
  std::thread echo([&] {
    pin(cpus[1]);
    for (long i = 0;; ++i) {
      long seen;
      while ((seen = ball.load(std::memory_order_acquire)) != 2 * i + 1)
        if (seen < 0) return;
      ball.store(2 * i + 2, std::memory_order_release);
    }
  });
  cpu_set_t before;
  pthread_getaffinity_np(pthread_self(), sizeof before, &before);
  pin(cpus[0]);
  // At most a quarter of a second: where the two threads cannot run at once (a CPU quota), a trip takes a time slice.
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::milliseconds(250);
  std::vector<double> ns;
  for (long r = 0, i = 0; r < rounds && std::chrono::steady_clock::now() < give_up; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    int k = 0;
    for (; k < trips && (k % 256 != 0 || std::chrono::steady_clock::now() < give_up); ++k, ++i) {
      ball.store(2 * i + 1, std::memory_order_release);
      while (ball.load(std::memory_order_acquire) != 2 * i + 2) {}
    }
    if (k != 0)
      ns.push_back(std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count() / k);
  }
  ball.store(-1, std::memory_order_release);
  echo.join();
  pthread_setaffinity_np(pthread_self(), sizeof before, &before);  // the benchmark's own threads go anywhere again
  if (ns.empty()) return 0;
  std::nth_element(ns.begin(), ns.begin() + static_cast<std::ptrdiff_t>(ns.size() / 2), ns.end());
  return ns[ns.size() / 2];
}

}  // namespace tether_bench
