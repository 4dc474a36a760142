// SPDX-License-Identifier: BSL-1.0
// A minimal intrusive reference count for tether's immutable shared nodes (contexts, values, revocations).
#pragma once

#include <boost/smart_ptr/intrusive_ptr.hpp>

#include <atomic>
#include <cstdint>
#include <utility>

namespace tether::inline v1::detail {

/// Base of every node shared through boost::intrusive_ptr. Copying a pointer is one relaxed increment.
class ref_counted {
public:
  ref_counted() = default;
  ref_counted(const ref_counted&) = delete;
  ref_counted& operator=(const ref_counted&) = delete;

  friend void intrusive_ptr_add_ref(const ref_counted* p) noexcept {
    // relaxed: a new reference is made from an existing one, which already orders us after construction.
    p->refs_.fetch_add(1, std::memory_order_relaxed);
  }
  /// The first reference to an object that no other thread can see yet: a plain store, not a read-modify-write
  /// (the locked add waited for the new object's cache line, a miss for recycled memory). See make_ref().
  friend void take_first_reference(const ref_counted* p) noexcept {
    // relaxed: whatever publishes the object to another thread orders this store with it.
    p->refs_.store(1, std::memory_order_relaxed);
  }
  friend void intrusive_ptr_release(const ref_counted* p) noexcept {
    // acq_rel: the last release must see every write made through the other references before deleting.
    if (p->refs_.fetch_sub(1, std::memory_order_acq_rel) == 1) delete p;
  }

protected:
  virtual ~ref_counted() = default;

private:
  mutable std::atomic<std::uint32_t> refs_{0};
};

template <class T>
using ref = boost::intrusive_ptr<T>;

/// `new T(args...)` and its first reference, without an atomic read-modify-write.
template <class T, class... Args>
ref<T> make_ref(Args&&... args) {
  T* made = new T(std::forward<Args>(args)...);
  take_first_reference(made);
  return ref<T>(made, false);
}

}  // namespace tether::inline v1::detail
