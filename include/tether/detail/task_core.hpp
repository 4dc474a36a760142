// SPDX-License-Identifier: BSL-1.0
// The task manager's engine: the fair queue, the id registry and the fiber workers, and the rules that tie them.
#pragma once

#include <tether/config.hpp>
#include <tether/detail/fair_queue.hpp>
#include <tether/detail/fiber_worker.hpp>
#include <tether/detail/task_record.hpp>
#include <tether/detail/task_registry.hpp>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string_view>
#include <vector>

namespace tether::inline v1::detail {

/// What the task manager's options become.
struct task_core_settings {
  unsigned workers = 1;
  queue_limits limits;
  std::chrono::seconds retain_for{600};
  std::size_t max_retained = 100'000;
  std::size_t stack_size = 128 * 1024;
  std::chrono::microseconds standby_poll{1'000};
};

/// Everything behind tether::task_manager. Every task reaches exactly one final status: the worker that ran it
/// sets it, or, for a task that never started, whoever took it out of the queue (the fair queue's lock decides
/// between a cancel and a worker taking it).
/// **Thread safety:** every member from any thread; shutdown() not from one of this manager's tasks.
class task_core final : public task_source {
public:
  TETHER_DECL explicit task_core(const task_core_settings& settings);
  task_core(const task_core&) = delete;
  task_core& operator=(const task_core&) = delete;
  /// shutdown(cancel), then the workers are joined.
  TETHER_DECL ~task_core();

  /// Files and queues `task`, replacing or rejecting a live task with its id; wakes a sleeping worker.
  TETHER_DECL void submit(task_record& task, on_duplicate duplicate);

  TETHER_DECL cancel_outcome cancel(task_record& task, task_end why);
  TETHER_DECL cancel_outcome cancel(std::string_view id);
  /// Cancels the tasks of every group `match` accepts; returns how many were cancelled or asked to stop.
  TETHER_DECL std::size_t cancel_matching(const std::function<bool(std::string_view)>& match, task_end why);

  task_registry::found find(std::string_view id) const { return registry_.find(id); }
  /// A hint: brings the registry slot of an id with this hash into the cache.
  void prefetch(std::uint64_t hash) const noexcept { registry_.prefetch(hash); }
  /// A finished task past retain_for: it reads as expired.
  bool expired(const task_record& task) const noexcept {
    return task.has_ended() && registry_.expired(task, coarse_clock::now());
  }
  std::vector<ref<task_record>> collect(const std::function<bool(const task_record&)>& keep) const {
    return registry_.collect(keep);
  }

  TETHER_DECL shutdown_report shutdown(shutdown_mode mode);

  unsigned worker_count() const noexcept { return static_cast<unsigned>(workers_.size()); }

  // task_source
  bool has_work() const noexcept override { return queue_.queued() != 0; }
  TETHER_DECL bool run_one(fiber_worker& worker) noexcept override;
  void wake_idle_worker() noexcept override { wake_one(); }

private:
  TETHER_DECL void end_unstarted(task_record& task) noexcept;
  /// Runs a task whose start the caller claimed and marked; returns its end time.
  TETHER_DECL std::chrono::system_clock::time_point run(task_record& task, fiber_worker& worker) noexcept;
  /// Claims the start of a task that this worker took from the queue, and marks it started at `at` (zero: now), or
  /// at its submission if that is later; false when a cancel claimed it first.
  TETHER_DECL bool claim_and_start(task_record& task, std::chrono::system_clock::time_point at) noexcept;
  /// Drops `task` if no worker has started it (it is then ended, cancelled, and never runs), else asks it to stop
  /// unless it has ended; says which.
  TETHER_DECL cancel_outcome stop_or_drop(task_record& task, task_end why) noexcept;
  TETHER_DECL void wake_one() noexcept;

  fair_queue queue_;
  task_registry registry_;
  idle_workers idle_;
  std::vector<std::unique_ptr<fiber_worker>> workers_;
  std::mutex shutdown_mutex_;
  bool shut_down_ = false;  // guarded by shutdown_mutex_
  shutdown_report report_;  // guarded by shutdown_mutex_
};

/// Throws would_deadlock when the calling fiber runs `task` itself (a task waiting for its own end).
TETHER_DECL void refuse_self_wait(const task_record& task, std::string_view api);

}  // namespace tether::inline v1::detail

// The definitions live in impl/task_manager.ipp, which tether/task_manager.hpp includes.
