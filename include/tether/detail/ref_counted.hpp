// SPDX-License-Identifier: BSL-1.0
// A minimal intrusive reference count for tether's shared objects (contexts, values, revocations, task records).
#pragma once

#include <boost/smart_ptr/intrusive_ptr.hpp>

#include <atomic>
#include <cassert>
#include <cstdint>
#include <utility>

namespace tether::inline v1::detail {

class ref_counted;
template <class T>
using ref = boost::intrusive_ptr<T>;
template <class T>
ref<T> adopt_fresh(T* fresh) noexcept;

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
  friend void intrusive_ptr_release(const ref_counted* p) noexcept {
    // acq_rel: the last release must see every write made through the other references before deleting.
    if (p->refs_.fetch_sub(1, std::memory_order_acq_rel) == 1) delete p;
  }

protected:
  virtual ~ref_counted() = default;

private:
  template <class T>
  friend ref<T> adopt_fresh(T* fresh) noexcept;

  mutable std::atomic<std::uint32_t> refs_{0};
};

/// The first reference to `fresh`, an object just made that no other thread can see yet: a plain store, not a
/// read-modify-write (the locked add waited for the new object's cache line, a miss for recycled memory).
template <class T>
ref<T> adopt_fresh(T* fresh) noexcept {
  const ref_counted* counted = fresh;
  assert(counted->refs_.load(std::memory_order_relaxed) == 0 && "adopt_fresh: the object has references already");
  // relaxed: whatever publishes the object to another thread orders this store with it.
  counted->refs_.store(1, std::memory_order_relaxed);
  return ref<T>(fresh, false);
}

/// `new T(args...)` and its first reference, without an atomic read-modify-write.
template <class T, class... Args>
ref<T> make_ref(Args&&... args) {
  return adopt_fresh(new T(std::forward<Args>(args)...));
}

}  // namespace tether::inline v1::detail
