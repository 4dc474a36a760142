// SPDX-License-Identifier: BSL-1.0
// The task registry's hash table: ids to records, in one flat array probed linearly.
#pragma once

#include <tether/detail/task_record.hpp>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string_view>
#include <utility>

namespace tether::inline v1::detail {

/// Where a table's array is, read without the table's lock to prefetch a slot. It lives apart from the lock's cache
/// line: submitters and evicting workers take that lock in turn, and a submit's prefetch that first waited for the
/// line to come over from the other core started too late to hide the slot's own miss.
struct table_hint {
  std::atomic<const void*> slots{nullptr};
  std::atomic<std::size_t> mask{0};

  /// Starts loading the slot where `hash` would be, in a table of `slot_size`-byte slots.
  void prefetch(std::uint64_t hash, std::size_t slot_size) const noexcept {
    // relaxed: a hint only; stale values prefetch freed or unrelated memory, which does no harm.
    if (const void* at = slots.load(std::memory_order_relaxed))
      __builtin_prefetch(static_cast<const char*>(at) + (hash & mask.load(std::memory_order_relaxed)) * slot_size);
  }
};

/// Open addressing with linear probing over slots of {hash, record}: a lookup reads one or two cache lines of the
/// array and compares ids only on a full 64-bit hash match. (A node-based std::unordered_map took a cache miss
/// per node, and its lookups were the largest cost of a task.) The table owns one reference to each record.
/// **Thread safety:** none; the registry's shard lock guards it.
class id_table {
public:
  struct slot {
    std::uint64_t hash = 0;
    task_record* record = nullptr;  ///< nullptr: empty
  };

  /// `hint` is where the table tells prefetch() callers where its array is; it must outlive the table.
  explicit id_table(table_hint& hint) noexcept : hint_(hint) {}
  id_table(const id_table&) = delete;
  id_table& operator=(const id_table&) = delete;
  ~id_table() {
    // The entries are cold, one cache miss each: ask for a few ahead, so that the misses overlap.
    constexpr std::size_t ahead = 8;
    for (std::size_t i = 0; i < capacity_; ++i) {
      if (i + ahead < capacity_) __builtin_prefetch(slots_[i + ahead].record, 1);
      release(slots_[i]);
    }
  }

  /// The slot holding `id`, or nullptr.
  slot* find(std::string_view id, std::uint64_t hash) noexcept {
    if (capacity_ == 0) return nullptr;
    for (std::size_t i = hash & mask(); slots_[i].record; i = (i + 1) & mask()) {
      const slot& s = slots_[i];
      if (s.hash == hash && s.record->id == id) return &slots_[i];
    }
    return nullptr;
  }

  /// The slot holding exactly this record, or nullptr (another submission has its id now).
  slot* find(const task_record& record) noexcept {
    if (capacity_ == 0) return nullptr;
    for (std::size_t i = record.hash & mask(); slots_[i].record; i = (i + 1) & mask())
      if (slots_[i].record == &record) return &slots_[i];
    return nullptr;
  }

  /// Makes room for one more entry, so that the insert after it cannot fail. Throws bad_alloc.
  void reserve_one() {
    if ((size_ + 1) * 2 > capacity_) grow();
  }

  /// Files `record` (whose id is not in the table) and takes a reference to it. Call reserve_one() first.
  void insert(task_record& record) noexcept {
    std::size_t i = record.hash & mask();
    while (slots_[i].record) i = (i + 1) & mask();
    intrusive_ptr_add_ref(&record);
    slots_[i] = {record.hash, &record};
    ++size_;
  }

  /// Puts `record` in place of the record `s` holds (the same id); returns that one with the table's reference.
  [[nodiscard]] task_record* replace(slot& s, task_record& record) noexcept {
    intrusive_ptr_add_ref(&record);
    return std::exchange(s.record, &record);
  }

  /// Empties `s`, releasing what it held, and moves later entries of its probe run back into the gap.
  void erase(slot& s) noexcept {
    release(s);
    std::size_t hole = static_cast<std::size_t>(&s - slots_.get());
    for (std::size_t i = (hole + 1) & mask(); slots_[i].record; i = (i + 1) & mask()) {
      const std::size_t home = slots_[i].hash & mask();
      // The entry may move into the hole when its home is not in (hole, i], going round the end of the array.
      const bool stays = hole < i ? (home > hole && home <= i) : (home > hole || home <= i);
      if (stays) continue;
      slots_[hole] = slots_[i];
      hole = i;
    }
    slots_[hole] = {};
    --size_;
  }

  /// Calls fn(record) for every record.
  template <class Fn>
  void for_each_record(Fn&& fn) const {
    for (std::size_t i = 0; i < capacity_; ++i)
      if (task_record* r = slots_[i].record) fn(*r);
  }

  std::size_t records() const noexcept { return size_; }

private:
  std::size_t mask() const noexcept { return capacity_ - 1; }

  static void release(slot& s) noexcept {
    if (s.record) intrusive_ptr_release(s.record);
    s.record = nullptr;
  }

  void grow() {
    const std::size_t capacity = capacity_ == 0 ? 16 : capacity_ * 2;
    std::unique_ptr<slot[]> old = std::exchange(slots_, std::make_unique<slot[]>(capacity));
    const std::size_t old_capacity = std::exchange(capacity_, capacity);
    for (std::size_t i = 0; i < old_capacity; ++i) {
      if (!old[i].record) continue;
      std::size_t j = old[i].hash & mask();
      while (slots_[j].record) j = (j + 1) & mask();
      slots_[j] = old[i];
    }
    hint_.mask.store(mask(), std::memory_order_relaxed);  // relaxed: only prefetches read them
    hint_.slots.store(slots_.get(), std::memory_order_relaxed);
  }

  std::unique_ptr<slot[]> slots_;
  std::size_t capacity_ = 0;  // a power of two, or 0
  std::size_t size_ = 0;      // records
  table_hint& hint_;  // slots_ and mask(), for prefetches without the lock
};

}  // namespace tether::inline v1::detail
