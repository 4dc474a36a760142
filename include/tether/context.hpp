// SPDX-License-Identifier: BSL-1.0
// Context propagation: typed per-user values that follow the task (not the thread) and die with their owner.
#pragma once

#include <tether/config.hpp>
#include <tether/detail/context_node.hpp>
#include <tether/error.hpp>

#include <concepts>
#include <functional>
#include <stop_token>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

namespace tether::inline v1 {

class context;

namespace detail {
struct context_access;

/// This thread's installed context: one owned reference, or nullptr for the empty context. One object per thread
/// in both build modes, and across shared objects (default visibility).
TETHER_DECL TETHER_VISIBLE context_node*& current_context_slot() noexcept;

/// Creates a key's identity; throws invalid_argument on an empty name.
TETHER_DECL ref<key_info> make_key(std::string_view name, bool sensitive);
}  // namespace detail

/// A typed key under which a context holds one value. Keys are compared by identity: two keys with the same name
/// are different keys, and copies of a key are the same key. A `sensitive` key's value becomes unreadable once
/// the context's lifetime is revoked (get() throws context_revoked); other keys stay readable, e.g. a trace id.
/// **Thread safety:** immutable; copies may be used from any thread.
///
///     inline const tether::context_key<std::string> user_id{"user_id", /*sensitive=*/true};
template <class T>
class context_key {
  static_assert(std::is_same_v<T, std::remove_cvref_t<T>> && std::is_object_v<T>,
                "context_key<T> needs a plain object type: the context stores a T and hands out const T*.");

public:
  /// `name` shows up in messages and must not be empty.
  explicit context_key(std::string_view name, bool sensitive = false) : info_(detail::make_key(name, sensitive)) {}

  std::string_view name() const noexcept { return info_->name; }
  bool sensitive() const noexcept { return info_->sensitive; }

private:
  friend class context;
  detail::ref<detail::key_info> info_;
};

/// An immutable snapshot of keyed values, plus the lifetimes it is attached to. The default-constructed context is
/// the empty one. Copying is a reference-count bump; with() makes a new snapshot and never changes this one.
/// **Thread safety:** const members from any thread, also on one shared object; assigning to an object that
/// other threads read is a race, as for std::shared_ptr.
///
///     auto ctx = tether::context::current().with(user_id, "ada");
///     tether::context_scope scope(ctx);          // code below, and work it submits, sees user_id == "ada"
class context {
public:
  context() noexcept = default;

  /// The context of the running task or thread (a fiber task sees its own). A thread-local read and a count bump.
  static context current() noexcept;

  /// The value under `key`, or nullptr when unset. The pointer stays valid while any context holding this
  /// snapshot (or one derived from it) lives. Throws context_revoked when `key` is sensitive and this context is
  /// revoked, set or not.
  template <class T>
  const T* get(const context_key<T>& key) const {
    if (!node_) return nullptr;
    if (key.sensitive()) node_->check_readable(*key.info_);
    const detail::value_base* found = node_->find(key.info_.get());
    return found ? &static_cast<const detail::value_box<T>*>(found)->value : nullptr;
  }

  /// A new snapshot equal to this one except that `key` holds `value`; it stays attached to the same lifetimes.
  /// Allocates; this context, and every other holder of it, is unchanged.
  template <class T>
  [[nodiscard]] context with(const context_key<T>& key, std::type_identity_t<T> value) const {
    detail::ref<detail::value_base> box = detail::make_ref<detail::value_box<T>>(std::move(value));
    return context(detail::context_node::derive(node_.get(), key.info_, std::move(box)));
  }

  /// True once a lifetime this context (or the one it was derived from) is attached to was revoked.
  bool revoked() const noexcept { return node_ && node_->guard() && node_->guard()->revoked(); }

  /// Stop is requested when revoked(); a context attached to no lifetime gives a token that never stops.
  std::stop_token stop_token() const noexcept {
    return node_ && node_->guard() ? node_->guard()->token() : std::stop_token();
  }

  /// True for the empty context: no values and no lifetime.
  bool empty() const noexcept { return !node_; }

private:
  friend struct detail::context_access;
  friend class lifetime;
  explicit context(detail::ref<detail::context_node> node) noexcept : node_(std::move(node)) {}

  detail::ref<detail::context_node> node_;
};

/// Installs a context on the current thread, or fiber, and puts the previous one back when it ends. Scopes nest;
/// each restores exactly what was current when it began. Allocates nothing.
/// **Thread safety:** belongs to the thread or fiber that made it; not copyable or movable.
class context_scope {
public:
  explicit context_scope(context ctx) noexcept;
  ~context_scope();
  context_scope(const context_scope&) = delete;
  context_scope& operator=(const context_scope&) = delete;

private:
  const detail::context_node* installed_;  // for the debug check that nobody left another context behind
  context saved_;
};

/// Owns the contexts attached to it: revoke() (or the destructor) revokes all of them and everything derived from
/// them with with(): revoked() turns true, stop_token() fires, sensitive keys throw context_revoked. A session
/// owns one; its end revokes it, so no task can read a dead session's data.
/// **Thread safety:** attach, revoke and revoked from any thread; moving and destroying need exclusive access.
///
///     tether::lifetime session("session-42");
///     auto ctx = session.attach(tether::context{}.with(user_id, "ada"));
///     session.revoke();                           // ctx.get(user_id) now throws context_revoked
class lifetime {
public:
  /// An unnamed lifetime; messages call it "(unnamed)".
  lifetime() : lifetime(std::string("(unnamed)")) {}
  /// `name` (e.g. the session id) shows up in context_revoked messages.
  TETHER_DECL explicit lifetime(std::string name);
  lifetime(lifetime&&) noexcept = default;
  /// Revokes what this lifetime owned before taking over `other`'s.
  lifetime& operator=(lifetime&& other) noexcept {
    if (this != &other) {
      revoke();
      root_ = std::move(other.root_);
    }
    return *this;
  }
  ~lifetime() { revoke(); }

  /// `base` (by default the current context) with the same values, attached to this lifetime as well as to any
  /// lifetime `base` already had. On a revoked lifetime the result is already revoked. Allocates at most once.
  /// Throws invalid_argument on a moved-from lifetime.
  TETHER_DECL context attach(context base = context::current()) const;

  /// Revokes every context attached to this lifetime. Idempotent; a no-op on a moved-from lifetime.
  void revoke() noexcept {
    if (root_) root_->revoke();
  }
  /// True once revoked, and for a moved-from lifetime, which owns nothing that lives.
  bool revoked() const noexcept { return !root_ || root_->revoked(); }

  /// The name given at construction; empty when moved from.
  TETHER_DECL const std::string& name() const noexcept;

private:
  detail::ref<detail::revocation> root_;
};

namespace detail {

/// How the non-public parts of tether reach a context's node without copying it.
struct context_access {
  static const context_node* node(const context& c) noexcept { return c.node_.get(); }
  static context_node* release(context& c) noexcept { return c.node_.detach(); }
  static context adopt(context_node* owned) noexcept { return context(ref<context_node>(owned, false)); }
};

/// Installs `next` as this thread's current context and returns the one it replaces. Moves two pointers: no
/// allocation and no count change.
///
/// The fiber hook: a thread's current context is one slot, so a scheduler that runs several fibers on one thread
/// must give each fiber its own. Whenever it switches from fiber A to fiber B (in Boost.Fiber: in pick_next(),
/// which runs on A just before B is resumed) it stores `exchange_current({})` in A's fiber properties, then
/// installs B's with `exchange_current(std::move(b_saved))`. Saving first makes A == B (a yield with nobody else
/// ready) come out right; when pick_next() finds nobody, store A's context all the same and leave the slot
/// empty, since the dispatcher fiber that runs next has none. A new fiber starts in the empty context; the task
/// it runs installs its captured one (invoke_in). test/context_test.cpp has a complete scheduler doing this.
inline context exchange_current(context next) noexcept {
  context_node*& slot = current_context_slot();
  context_node* previous = slot;
  slot = context_access::release(next);
  return context_access::adopt(previous);
}

/// Installs `ctx` around one call of `fn` and restores the previous context, also when `fn` throws.
template <class Fn, class... Args>
decltype(auto) invoke_in(const context& ctx, Fn&& fn, Args&&... args) {
  context_scope scope(ctx);
  return std::invoke(std::forward<Fn>(fn), std::forward<Args>(args)...);
}

/// The same, taking `ctx` over: no count bump and drop, for a caller that is done with its context (a task).
template <class Fn, class... Args>
decltype(auto) invoke_in(context&& ctx, Fn&& fn, Args&&... args) {
  context_scope scope(std::move(ctx));
  return std::invoke(std::forward<Fn>(fn), std::forward<Args>(args)...);
}

[[noreturn]] TETHER_DECL void context_left_behind(const char* where) noexcept;
[[noreturn]] TETHER_DECL void context_scope_mismatch() noexcept;

/// Debug builds: aborts with a message naming `where` unless the current context is the empty one. Executors
/// call it on their worker threads after each task. With NDEBUG: does nothing.
inline void expect_empty_context([[maybe_unused]] const char* where) noexcept {
#ifndef NDEBUG
  if (current_context_slot() != nullptr) context_left_behind(where);
#endif
}

/// A function together with the context it was captured in; calling it runs the function under that context.
/// What bind() returns and what executors store per task.
/// **Thread safety:** as Fn; the context part is immutable.
template <class Fn>
class bound {
public:
  template <class F>
  bound(context ctx, F&& fn) : ctx_(std::move(ctx)), fn_(std::forward<F>(fn)) {}

  template <class... Args>
    requires std::invocable<Fn&, Args...>
  decltype(auto) operator()(Args&&... args) & {
    return invoke_in(ctx_, fn_, std::forward<Args>(args)...);
  }
  template <class... Args>
    requires std::invocable<const Fn&, Args...>
  decltype(auto) operator()(Args&&... args) const& {
    return invoke_in(ctx_, fn_, std::forward<Args>(args)...);
  }
  template <class... Args>
    requires std::invocable<Fn, Args...>
  decltype(auto) operator()(Args&&... args) && {
    return invoke_in(std::move(ctx_), std::move(fn_), std::forward<Args>(args)...);
  }

  /// The context the function runs under.
  const tether::context& captured() const noexcept { return ctx_; }

private:
  tether::context ctx_;
  Fn fn_;
};

}  // namespace detail

/// Returns a callable that runs `fn` (arguments forwarded) under the context current now, on whatever thread
/// calls it. This is how to carry a context into a thread tether does not own:
///
///     std::thread worker(tether::bind([] { audit(*tether::context::current().get(user_id)); }));
template <class Fn>
  requires std::move_constructible<std::decay_t<Fn>> && (!std::same_as<std::decay_t<Fn>, context>)
[[nodiscard]] auto bind(Fn&& fn) {
  return detail::bound<std::decay_t<Fn>>(context::current(), std::forward<Fn>(fn));
}

/// Returns a callable that runs `fn` under `ctx`.
template <class Fn>
  requires std::move_constructible<std::decay_t<Fn>>
[[nodiscard]] auto bind(context ctx, Fn&& fn) {
  return detail::bound<std::decay_t<Fn>>(std::move(ctx), std::forward<Fn>(fn));
}

namespace detail {

/// Executors, at submit: the task together with the submitter's context.
template <class Fn>
[[nodiscard]] auto capture(Fn&& fn) {
  return tether::bind(std::forward<Fn>(fn));
}

/// Executors, on a worker thread or fiber they own: runs a captured task and leaves the worker in the empty
/// context, also when it throws. Debug builds abort (naming `where`) if the worker was not empty before or after;
/// release builds drop whatever was left behind, so it cannot reach the next task. An executor running on a
/// thread it does not own (affine_executor on the user's main thread) calls the task directly instead: the
/// task's scope restores the owner's own context.
template <class Task>
decltype(auto) run_captured(Task&& task, const char* where) {
  struct leave_empty {
    const char* where;
    ~leave_empty() {
      expect_empty_context(where);
      if (current_context_slot() != nullptr) exchange_current(context());
    }
  };
  expect_empty_context(where);
  leave_empty after{where};
  return std::invoke(std::forward<Task>(task));
}

}  // namespace detail

// ---- definitions ---------------------------------------------------------------------------------------------

inline context context::current() noexcept { return context(detail::ref<detail::context_node>(
    detail::current_context_slot())); }

inline context_scope::context_scope(context ctx) noexcept
    : installed_(detail::context_access::node(ctx)), saved_(detail::exchange_current(std::move(ctx))) {}

inline context_scope::~context_scope() {
  [[maybe_unused]] const context popped = detail::exchange_current(std::move(saved_));
#ifndef NDEBUG
  if (detail::context_access::node(popped) != installed_) detail::context_scope_mismatch();
#endif
}

}  // namespace tether::inline v1

#if TETHER_HEADER_ONLY
#  include <tether/impl/context.ipp>
#endif
