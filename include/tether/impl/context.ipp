// SPDX-License-Identifier: BSL-1.0
// Out-of-line definitions for context.hpp and detail/context_node.hpp.
#pragma once

#include <tether/context.hpp>

#include <cstdio>
#include <cstdlib>

namespace tether::inline v1 {

namespace detail {

TETHER_DECL context_node*& current_context_slot() noexcept {
  // A raw owning pointer, not a context: a trivially destructible thread_local is never torn down, so a fiber
  // scheduler that still swaps contexts while its thread exits cannot touch a destroyed slot.
  static thread_local context_node* slot = nullptr;
  return slot;
}

TETHER_DECL ref<key_info> make_key(std::string_view name, bool sensitive) {
  if (name.empty()) raise(errc::invalid_argument, "tether::context_key: a key needs a name, got '{}'", name);
  return ref<key_info>(new key_info(name, sensitive));
}

TETHER_DECL revocation::revocation(ref<revocation> outer, ref<revocation> root)
    : outer_(std::move(outer)), root_(std::move(root)) {
  // A stop_callback on a token that has already stopped runs at once, so a lifetime revoked meanwhile still counts.
  from_outer_.emplace(outer_->token(), forward_stop{this});
  from_root_.emplace(root_->token(), forward_stop{this});
}

TETHER_DECL const std::string& revocation::revoked_by() const noexcept {
  if (!root_) return name_;
  if (root_->revoked() || !outer_->revoked()) return root_->name_;
  return outer_->revoked_by();
}

TETHER_DECL ref<context_node> context_node::make(std::size_t capacity, ref<revocation> guard) {
  void* memory = ::operator new(sizeof(context_node) + capacity * sizeof(entry));
  return adopt_fresh(::new (memory) context_node(std::move(guard)));  // noexcept: nothing to undo
}

TETHER_DECL context_node::~context_node() {
  entry* made = first();
  for (std::size_t i = size_; i > 0; --i) made[i - 1].~entry();
}

TETHER_DECL ref<context_node> context_node::derive(const context_node* base, ref<key_info> key,
                                                   ref<value_base> value) {
  ref<context_node> node = make((base ? base->size_ : 0) + 1, base ? base->guard_ : nullptr);
  if (base)
    for (const entry& e : base->entries())
      if (e.key != key) node->add(e.key, e.value);
  node->add(std::move(key), std::move(value));
  return node;
}

TETHER_DECL ref<context_node> context_node::rebind(const context_node* base, ref<revocation> guard) {
  ref<context_node> node = make(base ? base->size_ : 0, std::move(guard));
  if (base)
    for (const entry& e : base->entries()) node->add(e.key, e.value);
  return node;
}

TETHER_DECL void context_node::check_readable(const key_info& key) const {
  if (guard_ && guard_->revoked())
    raise(errc::context_revoked, "tether::context::get: key '{}' is sensitive and lifetime '{}' was revoked",
          key.name, guard_->revoked_by());
}

TETHER_DECL void context_left_behind(const char* where) noexcept {
  std::fprintf(stderr,
               "tether: %s: a context is still installed on this worker after a task; every task must leave its "
               "worker in the empty context (the task owns the context, never the thread)\n",
               where);
  std::abort();
}

TETHER_DECL void context_scope_mismatch() noexcept {
  std::fprintf(stderr,
               "tether::context_scope::~context_scope: the context this scope installed is no longer current; "
               "something inside the scope installed another one and did not restore it\n");
  std::abort();
}

}  // namespace detail

TETHER_DECL lifetime::lifetime(std::string name) : root_(new detail::revocation(std::move(name))) {}

TETHER_DECL context lifetime::attach(context base) const {
  if (!root_) detail::raise(errc::invalid_argument, "tether::lifetime::attach: this lifetime was moved from");
  const detail::context_node* node = base.node_.get();
  const detail::ref<detail::revocation> none;
  const detail::ref<detail::revocation>& guard = node ? node->guard() : none;
  if (guard && guard->covered_by(root_.get())) return base;  // already attached here
  detail::ref<detail::revocation> next =
      guard ? detail::ref<detail::revocation>(new detail::revocation(guard, root_)) : root_;
  return context(detail::context_node::rebind(node, std::move(next)));
}

TETHER_DECL const std::string& lifetime::name() const noexcept {
  static const std::string none;
  return root_ ? root_->name() : none;
}

}  // namespace tether::inline v1
