// SPDX-License-Identifier: BSL-1.0
// A hashed timer wheel: what falls due costs time, what is not due costs nothing.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

namespace tether::inline v1::detail {

/// Deadlines hashed into `slot_count` slots of `resolution` time units each (the session manager uses nanoseconds).
/// A slot holds the entries whose deadline falls in its window, in this round of the wheel or a later one; a pass
/// over a slot fires those that are due and leaves the others for their round. Entries are never moved or removed
/// before they fire: an owner that changes its mind marks the old entry stale (e.g. by a generation in `Item`) and
/// drops it when it fires. Times must not be negative.
///
/// `advance_to(now, fire)` visits the slots in time order, so an item fires no earlier than its deadline, and items
/// further apart than one slot fire in deadline order; `fire` may insert, also into the slot being visited.
/// **Thread safety:** none; one owner.
template <class Item>
class timer_wheel {
public:
  /// `slot_count` must be a power of two; `start` is the time the wheel begins at.
  timer_wheel(std::int64_t resolution, std::size_t slot_count, std::int64_t start)
      : resolution_(resolution), mask_(slot_count - 1), slots_(slot_count), current_(start / resolution) {}

  /// Adds an entry; a deadline that has already passed fires on the next advance_to().
  void insert(std::int64_t deadline, Item item) {
    const std::int64_t tick = std::max(deadline / resolution_, current_);
    slots_[static_cast<std::size_t>(tick) & mask_].push_back({deadline, std::move(item)});
    ++size_;
  }

  /// Calls `fire(deadline, item)` for every entry with deadline <= now.
  template <class Fire>
  void advance_to(std::int64_t now, Fire&& fire) {
    const std::int64_t last = now / resolution_;
    for (;;) {
      if (size_ == 0) {
        current_ = std::max(current_, last);
        return;
      }
      run_slot(now, fire);
      if (current_ >= last) return;
      ++current_;
    }
  }

  /// When advance_to() next has work: the end of the first slot holding an entry due in its current round, so that
  /// one wake-up fires the whole slot. When every entry lies beyond one round, the end of that round; -1 when empty.
  std::int64_t next_due() const noexcept {
    if (size_ == 0) return -1;
    const auto count = static_cast<std::int64_t>(mask_ + 1);
    for (std::int64_t tick = current_; tick < current_ + count; ++tick)
      for (const entry& e : slots_[static_cast<std::size_t>(tick) & mask_])
        if (e.deadline / resolution_ <= tick) return (tick + 1) * resolution_;
    return (current_ + count) * resolution_;
  }

  std::size_t size() const noexcept { return size_; }
  std::int64_t resolution() const noexcept { return resolution_; }

private:
  struct entry {
    std::int64_t deadline;
    Item item;
  };

  template <class Fire>
  void run_slot(std::int64_t now, Fire& fire) {
    std::vector<entry>& bucket = slots_[static_cast<std::size_t>(current_) & mask_];
    // Several passes, because `fire` may insert into this very slot something that is already due.
    while (has_due(bucket, now)) {
      scratch_.swap(bucket);
      for (entry& e : scratch_) {
        if (e.deadline > now) {
          bucket.push_back(std::move(e));
          continue;
        }
        --size_;
        fire(e.deadline, e.item);
      }
      scratch_.clear();
    }
  }

  static bool has_due(const std::vector<entry>& bucket, std::int64_t now) noexcept {
    return std::any_of(bucket.begin(), bucket.end(), [now](const entry& e) { return e.deadline <= now; });
  }

  std::int64_t resolution_;
  std::size_t mask_;
  std::vector<std::vector<entry>> slots_;
  std::vector<entry> scratch_;  // the slot being fired; kept to reuse its capacity
  std::int64_t current_;        // the tick whose slot the next advance_to() visits first
  std::size_t size_ = 0;
};

}  // namespace tether::inline v1::detail
