// SPDX-License-Identifier: BSL-1.0
// A minimal intrusive reference count for tether's immutable shared nodes (contexts, values, revocations).
#pragma once

#include <boost/smart_ptr/intrusive_ptr.hpp>

#include <atomic>
#include <cstdint>

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

}  // namespace tether::inline v1::detail
