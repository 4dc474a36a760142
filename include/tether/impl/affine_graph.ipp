// SPDX-License-Identifier: BSL-1.0
// Out-of-line definitions for detail/affine_graph.hpp: the process-wide wait-for graph of affine executors.
#pragma once

#include <tether/detail/affine_graph.hpp>
#include <tether/error.hpp>

#include <fmt/format.h>

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <pthread.h>
#include <unistd.h>

namespace tether::inline v1 {

namespace detail {

namespace affine_impl {
/// -1: not known yet; 0: this thread owns no executor; 1: it owns one, or is the main thread.
inline TETHER_VISIBLE signed char& owner_flag() noexcept {
  static thread_local signed char flag = -1;
  return flag;
}

/// Depth first from `from`: true when owners waiting on executors lead back to a node that `me` owns. `path`, when
/// given, receives the executors along the way (only wanted for the message, once a cycle is known). The graph
/// never holds a cycle (each edge is checked as it is added), so the search ends; `budget` bounds it all the same.
inline bool leads_to(const affine_graph& graph, const affine_node* from, pid_t me,
                     std::vector<const affine_node*>* path, std::size_t depth) {
  if (path) path->push_back(from);
  const pid_t owner = from->owner.load(std::memory_order_acquire);
  if (owner == me) return true;
  if (owner != 0 && depth <= graph.waits.size())
    for (const affine_wait& w : graph.waits)
      if (w.waiter == owner && leads_to(graph, w.target, me, path, depth + 1)) return true;
  if (path) path->pop_back();
  return false;
}

/// "'b' belongs to thread 13, which waits on 'a', which belongs to this thread (12)".
inline std::string describe_cycle(const std::vector<const affine_node*>& path, pid_t me) {
  std::string text;
  for (std::size_t i = 0; i + 1 < path.size(); ++i)
    text += fmt::format("'{}' belongs to thread {}, which waits on ", path[i]->name,
                        path[i]->owner.load(std::memory_order_relaxed));  // relaxed: for the message only
  text += fmt::format("'{}', which belongs to this thread ({})", path.back()->name, me);
  return text;
}
}  // namespace affine_impl

TETHER_DECL pid_t current_tid() noexcept {
  static thread_local const pid_t tid = ::gettid();
  return tid;
}

namespace affine_impl {
/// main_thread()'s owner once a fork() made another thread the main one (0: the process's main thread), and its
/// node once main_thread() exists.
inline TETHER_VISIBLE pid_t forked_main_tid = 0;
inline TETHER_VISIBLE std::atomic<affine_node*> main_node{nullptr};

/// In the parent, on the thread about to fork: its id is read now, so that the child's only thread keeps it.
inline void before_fork() noexcept { (void)current_tid(); }

/// In the child: its only thread, the one that forked, owns main_thread() from now on; the main thread is gone.
inline void after_fork_in_child() noexcept {
  forked_main_tid = current_tid();
  owner_flag() = 1;
  if (affine_node* main = main_node.load(std::memory_order_acquire))
    main->owner.store(forked_main_tid, std::memory_order_release);
}

inline const bool fork_handlers = (::pthread_atfork(&before_fork, nullptr, &after_fork_in_child), true);
}  // namespace affine_impl

TETHER_DECL TETHER_VISIBLE pid_t main_thread_tid() noexcept {
  return affine_impl::forked_main_tid != 0 ? affine_impl::forked_main_tid : ::getpid();
}

TETHER_DECL TETHER_VISIBLE void set_main_thread_node(affine_node& main) noexcept {
  affine_impl::main_node.store(&main, std::memory_order_release);
}

TETHER_DECL TETHER_VISIBLE bool may_own_affine_executor() noexcept {
  signed char& flag = affine_impl::owner_flag();
  if (flag < 0) flag = current_tid() == main_thread_tid() ? 1 : 0;  // that thread owns main_thread()
  return flag > 0;
}

TETHER_DECL TETHER_VISIBLE void mark_affine_owner() noexcept { affine_impl::owner_flag() = 1; }

TETHER_DECL TETHER_VISIBLE affine_graph& affine_wait_graph() noexcept {
  static affine_graph* const graph = new affine_graph;  // never destroyed: waits may end during exit
  return *graph;
}

TETHER_DECL void affine_wait_edge::publish(const std::shared_ptr<const affine_node>& target, const char* api) {
  affine_graph& graph = affine_wait_graph();
  const pid_t me = current_tid();
  std::lock_guard lock(graph.mutex);
  // Look, then publish. Under the lock the two are one step, so of two owners calling into each other at the same
  // moment the second always finds the first one's edge.
  if (affine_impl::leads_to(graph, target.get(), me, nullptr, 0)) {
    std::vector<const affine_node*> path;
    affine_impl::leads_to(graph, target.get(), me, &path, 0);
    raise(errc::would_deadlock, "tether::affine_executor::{}: waiting on executor '{}' would deadlock: {}", api,
          target->name, affine_impl::describe_cycle(path, me));
  }
  const std::uint64_t token = graph.next_token++;
  graph.waits.push_back({me, target.get(), token});  // may throw bad_alloc: then nothing was published
  target_ = target;
  token_ = token;
}

TETHER_DECL void affine_wait_edge::withdraw() noexcept {
  affine_graph& graph = affine_wait_graph();
  std::lock_guard lock(graph.mutex);
  for (affine_wait& w : graph.waits)
    if (w.token == token_) {
      w = graph.waits.back();  // order does not matter
      graph.waits.pop_back();
      return;
    }
}

}  // namespace detail

}  // namespace tether::inline v1
