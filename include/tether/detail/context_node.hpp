// SPDX-License-Identifier: BSL-1.0
// The shared, immutable nodes behind tether::context: key identities, values, snapshots and revocations.
#pragma once

#include <tether/config.hpp>
#include <tether/detail/ref_counted.hpp>

#include <cstddef>
#include <new>
#include <optional>
#include <span>
#include <stop_token>
#include <string>
#include <string_view>
#include <utility>

namespace tether::inline v1::detail {

/// The identity of one context_key: its address tells keys apart, its name and flag are for reads and messages.
/// **Thread safety:** immutable after construction.
struct key_info final : ref_counted {
  key_info(std::string_view key_name, bool is_sensitive) : name(key_name), sensitive(is_sensitive) {}
  const std::string name;
  const bool sensitive;
};

/// A value stored under a key; shared, never changed, between every snapshot that holds it.
struct value_base : ref_counted {};

template <class T>
struct value_box final : value_base {
  explicit value_box(T v) : value(std::move(v)) {}
  const T value;
};

/// The revocation state of a context. A lifetime owns a root; a context attached to a second lifetime gets a node
/// that is revoked as soon as either its outer node (the first lifetime's) or its root (the second's) is.
/// **Thread safety:** every member from any thread.
class revocation final : public ref_counted {
public:
  /// A lifetime's own root; `name` shows up in context_revoked messages.
  explicit revocation(std::string name) : name_(std::move(name)) {}

  /// Revoked when `outer` or `root` is; `root` is the root of the lifetime doing the attach.
  TETHER_DECL revocation(ref<revocation> outer, ref<revocation> root);

  bool revoked() const noexcept { return source_.stop_requested(); }
  void revoke() noexcept { source_.request_stop(); }
  std::stop_token token() const noexcept { return source_.get_token(); }

  /// True when `root` (a lifetime's root) already revokes this node: it is this node's root or an outer one's.
  bool covered_by(const revocation* root) const noexcept {
    for (const revocation* r = this; r; r = r->outer_.get())
      if (r == root || r->root_.get() == root) return true;
    return false;
  }

  /// The lifetime's name; empty for a node that joins two lifetimes.
  const std::string& name() const noexcept { return name_; }

  /// The name of a revoked lifetime behind this node (the first one found), or of its own root when none is.
  TETHER_DECL const std::string& revoked_by() const noexcept;

private:
  /// Passes a stop request on from a parent's stop_source to ours.
  struct forward_stop {
    revocation* target;
    void operator()() const noexcept { target->revoke(); }
  };

  std::stop_source source_;  // declared before the callbacks, which must be gone before it is
  std::string name_;         // roots only
  ref<revocation> outer_;
  ref<revocation> root_;
  std::optional<std::stop_callback<forward_stop>> from_outer_;
  std::optional<std::stop_callback<forward_stop>> from_root_;
};

/// One immutable snapshot: the values by key and, when attached to a lifetime, its revocation. The entries follow
/// the node in the same allocation, so that with() allocates twice (the value and this), not three times.
/// **Thread safety:** immutable after construction.
class context_node final : public ref_counted {
public:
  struct entry {
    ref<key_info> key;
    ref<value_base> value;
  };

  /// The value under `key`, or nullptr.
  const value_base* find(const key_info* key) const noexcept {
    for (const entry& e : entries())
      if (e.key.get() == key) return e.value.get();
    return nullptr;
  }

  const ref<revocation>& guard() const noexcept { return guard_; }

  /// A copy of `base` (nullptr: the empty context) with `key` set to `value`.
  TETHER_DECL static ref<context_node> derive(const context_node* base, ref<key_info> key, ref<value_base> value);

  /// A copy of `base` with the same values, whose revocation is `guard`.
  TETHER_DECL static ref<context_node> rebind(const context_node* base, ref<revocation> guard);

  /// Throws context_revoked, naming `key` and the lifetime, when this snapshot is revoked.
  TETHER_DECL void check_readable(const key_info& key) const;

  /// What the node was allocated with (see make()); a delete-expression on a node comes here.
  static void operator delete(void* p) noexcept { ::operator delete(p); }

private:
  /// A node with room for `capacity` entries, none made yet; add() fills them.
  TETHER_DECL static ref<context_node> make(std::size_t capacity, ref<revocation> guard);
  explicit context_node(ref<revocation> guard) noexcept : guard_(std::move(guard)) {}
  TETHER_DECL ~context_node() override;
  void add(ref<key_info> key, ref<value_base> value) noexcept {
    ::new (static_cast<void*>(after() + size_ * sizeof(entry))) entry{std::move(key), std::move(value)};
    ++size_;
  }
  char* after() const noexcept { return reinterpret_cast<char*>(const_cast<context_node*>(this) + 1); }
  /// The first entry made, or nullptr (laundered: the entries were made in raw memory, not as members).
  entry* first() const noexcept { return size_ != 0 ? std::launder(reinterpret_cast<entry*>(after())) : nullptr; }
  std::span<const entry> entries() const noexcept { return {first(), size_}; }

  ref<revocation> guard_;
  std::size_t size_ = 0;  // entries made, in the memory right after this object
};
static_assert(sizeof(context_node) % alignof(context_node::entry) == 0, "the entries follow the node, aligned");

}  // namespace tether::inline v1::detail
