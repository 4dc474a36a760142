// SPDX-License-Identifier: BSL-1.0
// Who owns which affine_executor, and which owner threads wait on which executors: would_deadlock detection.
#pragma once

#include <tether/config.hpp>

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include <sys/types.h>

namespace tether::inline v1::detail {

/// A thread as an executor's owner: 1 for the process's main thread, else a number no thread of the process had
/// before; 0 is no thread. Not the kernel's thread id: the kernel gives an ended thread's id to a new one, and in
/// the child of a fork() the thread that forked keeps what it had in the parent (so that it keeps owning what it
/// owned), which a new thread of the child could then share.
using thread_token = std::uint64_t;

/// An executor's identity, shared with the wait-for graph so that an edge can outlive the executor it points to.
struct affine_node {
  explicit affine_node(std::string executor_name, thread_token owner_thread = 0, pid_t owner_thread_id = 0)
      : name(std::move(executor_name)), owner(owner_thread), owner_tid(owner_thread_id) {}
  const std::string name;
  /// The owner thread; 0 until one of run*/poll claims the executor.
  std::atomic<thread_token> owner;
  /// The owner's kernel thread id, as a debugger shows it: for messages only.
  std::atomic<pid_t> owner_tid;
};

/// The calling thread's token, made once per thread.
TETHER_DECL TETHER_VISIBLE thread_token current_thread() noexcept;

/// The kernel thread id of the calling thread, read once per thread (again in a fork() child): for messages.
TETHER_DECL TETHER_VISIBLE pid_t current_tid() noexcept;

/// The thread that owns main_thread(): the process's main thread, or in the child of a fork() the thread that
/// forked, which is the child's only thread.
TETHER_DECL TETHER_VISIBLE thread_token main_thread_token() noexcept;

/// True when the calling thread owns, or may own, an affine executor: it claimed one, or it is the process's main
/// thread (which owns main_thread()). Only such threads can be part of a cycle, so only they pay for the check.
TETHER_DECL TETHER_VISIBLE bool may_own_affine_executor() noexcept;

/// Records that the calling thread has claimed an executor.
TETHER_DECL TETHER_VISIBLE void mark_affine_owner() noexcept;

/// One blocked call of an owner thread: `waiter` waits on `target`. A fiber waiting counts as its thread waiting,
/// so a thread may have several.
struct affine_wait {
  thread_token waiter;
  const affine_node* target;  ///< kept alive by the waiting call's affine_wait_edge
  std::uint64_t token;
};

/// The process-wide wait-for graph: the blocked calls of owner threads, in no order. It holds one entry per call
/// that an owner thread is blocked in, so it stays tiny, and a flat list beats a map: adding and removing an edge
/// allocates nothing once the list has grown. Never destroyed, so calls during exit stay safe.
struct affine_graph {
  std::mutex mutex;
  std::vector<affine_wait> waits;
  std::uint64_t next_token = 1;
};
TETHER_DECL TETHER_VISIBLE affine_graph& affine_wait_graph() noexcept;

/// "The calling thread waits on `target`" for as long as this object lives. Throws would_deadlock instead when the
/// edge would close a cycle of owner threads waiting on each other. Threads that own no executor skip it all.
/// **Thread safety:** belongs to the waiting thread or fiber; not copyable.
class affine_wait_edge {
public:
  affine_wait_edge(const std::shared_ptr<const affine_node>& target, const char* api) {
    if (may_own_affine_executor()) publish(target, api);
  }
  ~affine_wait_edge() {
    if (token_ != 0) withdraw();
  }
  affine_wait_edge(const affine_wait_edge&) = delete;
  affine_wait_edge& operator=(const affine_wait_edge&) = delete;

private:
  TETHER_DECL void publish(const std::shared_ptr<const affine_node>& target, const char* api);
  TETHER_DECL void withdraw() noexcept;

  std::shared_ptr<const affine_node> target_;  // while the edge is in the graph, others may read the node
  std::uint64_t token_ = 0;
};

}  // namespace tether::inline v1::detail
