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
/// What tether knows of the calling thread, made on first use.
struct thread_identity {
  thread_token token = 0;
  pid_t tid = 0;
  signed char owner_flag = -1;  ///< -1: not known yet; 0: owns no executor; 1: owns one, or main_thread()'s
};
inline TETHER_VISIBLE thread_identity& this_thread() noexcept {
  static thread_local thread_identity identity;
  return identity;
}
inline TETHER_VISIBLE std::atomic<thread_token> next_token{2};  // 1 is the main thread's

/// main_thread()'s owner once a fork() made another thread the child's only one (0: the main thread).
inline TETHER_VISIBLE thread_token forked_main = 0;

/// Depth first from `from`: true when owners waiting on executors lead back to a node that `me` owns. `path`, when
/// given, receives the executors along the way (only wanted for the message, once a cycle is known). The graph
/// never holds a cycle (each edge is checked as it is added), so the search ends; `budget` bounds it all the same.
inline bool leads_to(const affine_graph& graph, const affine_node* from, thread_token me,
                     std::vector<const affine_node*>* path, std::size_t depth) {
  if (path) path->push_back(from);
  const thread_token owner = from->owner.load(std::memory_order_acquire);
  if (owner == me) return true;
  if (owner != 0 && depth <= graph.waits.size())
    for (const affine_wait& w : graph.waits)
      if (w.waiter == owner && leads_to(graph, w.target, me, path, depth + 1)) return true;
  if (path) path->pop_back();
  return false;
}

/// "'b' belongs to thread 13, which waits on 'a', which belongs to this thread (12)".
inline std::string describe_cycle(const std::vector<const affine_node*>& path) {
  std::string text;
  for (std::size_t i = 0; i + 1 < path.size(); ++i)
    text += fmt::format("'{}' belongs to thread {}, which waits on ", path[i]->name,
                        path[i]->owner_tid.load(std::memory_order_relaxed));  // relaxed: for the message only
  text += fmt::format("'{}', which belongs to this thread ({})", path.back()->name, current_tid());
  return text;
}

// fork(): the child has only the thread that forked. It keeps its token, so it keeps the executors it owned, and
// it takes over main_thread() (main_thread()'s own handlers hand it over). The graph's lock is held across the
// fork, so that the child never finds it taken by a thread that is not there; the child then forgets the waits of
// those threads.
inline void before_fork() noexcept {
  (void)current_thread();  // made now, in the parent, so that the child's thread keeps it
  affine_wait_graph().mutex.lock();
}
inline void after_fork_in_parent() noexcept { affine_wait_graph().mutex.unlock(); }
inline void after_fork_in_child() noexcept {
  thread_identity& me = this_thread();
  me.tid = ::gettid();
  me.owner_flag = 1;
  forked_main = me.token;
  affine_graph& graph = affine_wait_graph();
  std::erase_if(graph.waits, [&](const affine_wait& w) { return w.waiter != me.token; });
  graph.mutex.unlock();
}
/// Registered once per process, also when several shared objects carry their own copy of this code (hidden
/// visibility): twice, the second prepare would lock the graph's mutex again and never return.
inline TETHER_VISIBLE std::atomic<bool> fork_handlers_registered{false};
inline const bool fork_handlers = !fork_handlers_registered.exchange(true, std::memory_order_acq_rel) &&
                                  ::pthread_atfork(&before_fork, &after_fork_in_parent, &after_fork_in_child) == 0;
}  // namespace affine_impl

TETHER_DECL TETHER_VISIBLE thread_token current_thread() noexcept {
  affine_impl::thread_identity& me = affine_impl::this_thread();
  if (me.token == 0)
    me.token = ::gettid() == ::getpid() ? 1 : affine_impl::next_token.fetch_add(1, std::memory_order_relaxed);
  return me.token;
}

TETHER_DECL TETHER_VISIBLE pid_t current_tid() noexcept {
  affine_impl::thread_identity& me = affine_impl::this_thread();
  if (me.tid == 0) me.tid = ::gettid();
  return me.tid;
}

TETHER_DECL TETHER_VISIBLE thread_token main_thread_token() noexcept {
  return affine_impl::forked_main != 0 ? affine_impl::forked_main : 1;
}

TETHER_DECL TETHER_VISIBLE bool may_own_affine_executor() noexcept {
  signed char& flag = affine_impl::this_thread().owner_flag;
  if (flag < 0) flag = current_thread() == main_thread_token() ? 1 : 0;  // that thread owns main_thread()
  return flag > 0;
}

TETHER_DECL TETHER_VISIBLE void mark_affine_owner() noexcept { affine_impl::this_thread().owner_flag = 1; }

TETHER_DECL TETHER_VISIBLE affine_graph& affine_wait_graph() noexcept {
  static affine_graph* const graph = new affine_graph;  // never destroyed: waits may end during exit
  return *graph;
}

TETHER_DECL void affine_wait_edge::publish(const std::shared_ptr<const affine_node>& target, const char* api) {
  affine_graph& graph = affine_wait_graph();
  const thread_token me = current_thread();
  std::lock_guard lock(graph.mutex);
  // Look, then publish. Under the lock the two are one step, so of two owners calling into each other at the same
  // moment the second always finds the first one's edge.
  if (affine_impl::leads_to(graph, target.get(), me, nullptr, 0)) {
    std::vector<const affine_node*> path;
    affine_impl::leads_to(graph, target.get(), me, &path, 0);
    raise(errc::would_deadlock, "tether::affine_executor::{}: waiting on executor '{}' would deadlock: {}", api,
          target->name, affine_impl::describe_cycle(path));
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
