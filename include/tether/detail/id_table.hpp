// SPDX-License-Identifier: BSL-1.0
// The task registry's hash table: ids to records or tombstones, in one flat array probed linearly.
#pragma once

#include <tether/detail/block_cache.hpp>
#include <tether/detail/task_record.hpp>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>

namespace tether::inline v1::detail {

/// What an evicted record leaves under its id for a while, so that the id reads as expired, not unknown.
struct tombstone {
  std::string id;
  coarse_clock::time_point at;  ///< when it was evicted
  // Made and freed by workers, many per second: see block_cache.
  static void* operator new(std::size_t size) { return block_cache::allocate(size); }
  static void operator delete(void* p, std::size_t size) noexcept { block_cache::deallocate(p, size); }
};

/// Open addressing with linear probing over slots of {hash, entry}: a lookup reads one or two cache lines of the
/// array and compares ids only on a full 64-bit hash match. (A node-based std::unordered_map took a cache miss
/// per node, and its lookups were the largest cost of a task.) An entry is a task_record* or a tombstone*, told
/// apart by the low bit. The table owns one reference to each record; tombstones belong to the registry, which
/// takes each one out of the table before it frees it.
/// **Thread safety:** none; the registry's shard lock guards it.
class id_table {
public:
  struct slot {
    std::uint64_t hash = 0;
    std::uintptr_t entry = 0;  ///< 0: empty
    task_record* record() const noexcept { return entry & grave_bit ? nullptr : reinterpret_cast<task_record*>(entry); }
    tombstone* grave() const noexcept {
      return entry & grave_bit ? reinterpret_cast<tombstone*>(entry & ~grave_bit) : nullptr;
    }
  };

  id_table() = default;
  id_table(const id_table&) = delete;
  id_table& operator=(const id_table&) = delete;
  ~id_table() {
    // The entries are cold, one cache miss each: ask for a few ahead, so that the misses overlap.
    constexpr std::size_t ahead = 8;
    for (std::size_t i = 0; i < capacity_; ++i) {
      if (i + ahead < capacity_) __builtin_prefetch(slots_[i + ahead].record(), 1);
      release(slots_[i]);
    }
  }

  /// Starts loading the slot where `hash` would be. Safe without the lock: it reads two relaxed atomics that
  /// mirror the array, which may be stale (a prefetch of freed memory does no harm).
  void prefetch(std::uint64_t hash) const noexcept {
    if (const slot* slots = hint_slots_.load(std::memory_order_relaxed))  // relaxed: a hint only
      __builtin_prefetch(slots + (hash & hint_mask_.load(std::memory_order_relaxed)));
  }

  /// The slot holding `id`, or nullptr.
  slot* find(std::string_view id, std::uint64_t hash) noexcept {
    if (capacity_ == 0) return nullptr;
    for (std::size_t i = hash & mask(); slots_[i].entry != 0; i = (i + 1) & mask()) {
      const slot& s = slots_[i];
      if (s.hash == hash && name_of(s) == id) return &slots_[i];
    }
    return nullptr;
  }

  /// The slot holding exactly this record, or nullptr (another submission has its id now).
  slot* find(const task_record& record) noexcept {
    return find_entry(record.hash, reinterpret_cast<std::uintptr_t>(&record));
  }

  /// The slot holding exactly this tombstone, or nullptr.
  slot* find(std::uint64_t hash, const tombstone* grave) noexcept {
    return find_entry(hash, reinterpret_cast<std::uintptr_t>(grave) | grave_bit);
  }

  /// Makes room for one more entry, so that the insert after it cannot fail. Throws bad_alloc.
  void reserve_one() {
    if ((size_ + 1) * 2 > capacity_) grow();
  }

  /// Files `record` (whose id is not in the table) and takes a reference to it. Call reserve_one() first.
  void insert(task_record& record) noexcept {
    std::size_t i = record.hash & mask();
    while (slots_[i].entry != 0) i = (i + 1) & mask();
    intrusive_ptr_add_ref(&record);
    slots_[i] = {record.hash, reinterpret_cast<std::uintptr_t>(&record)};
    ++size_;
  }

  /// Puts `record` in place of what `s` holds (the same id), releasing that.
  void replace(slot& s, task_record& record) noexcept {
    intrusive_ptr_add_ref(&record);
    release(s);
    s.entry = reinterpret_cast<std::uintptr_t>(&record);
  }

  /// Puts `grave` in place of the record `s` holds, releasing the record.
  void bury(slot& s, const tombstone& grave) noexcept {
    release(s);
    s.entry = reinterpret_cast<std::uintptr_t>(&grave) | grave_bit;
  }

  /// Empties `s`, releasing what it held, and moves later entries of its probe run back into the gap.
  void erase(slot& s) noexcept {
    release(s);
    std::size_t hole = static_cast<std::size_t>(&s - slots_.get());
    for (std::size_t i = (hole + 1) & mask(); slots_[i].entry != 0; i = (i + 1) & mask()) {
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

  /// Calls fn(record) for every record (not tombstones).
  template <class Fn>
  void for_each_record(Fn&& fn) const {
    for (std::size_t i = 0; i < capacity_; ++i)
      if (task_record* r = slots_[i].record()) fn(*r);
  }

  std::size_t records() const noexcept {
    std::size_t n = 0;
    for_each_record([&](const task_record&) { ++n; });
    return n;
  }

private:
  static constexpr std::uintptr_t grave_bit = 1;
  static_assert(alignof(task_record) > 1 && alignof(tombstone) > 1, "entries need their low bit for the tag");

  std::size_t mask() const noexcept { return capacity_ - 1; }

  static std::string_view name_of(const slot& s) noexcept {
    if (const task_record* r = s.record()) return r->id;
    return s.grave()->id;
  }

  slot* find_entry(std::uint64_t hash, std::uintptr_t entry) noexcept {
    if (capacity_ == 0) return nullptr;
    for (std::size_t i = hash & mask(); slots_[i].entry != 0; i = (i + 1) & mask())
      if (slots_[i].entry == entry) return &slots_[i];
    return nullptr;
  }

  static void release(slot& s) noexcept {
    if (task_record* r = s.record()) intrusive_ptr_release(r);  // a tombstone is the registry's to free
    s.entry = 0;
  }

  void grow() {
    const std::size_t capacity = capacity_ == 0 ? 16 : capacity_ * 2;
    std::unique_ptr<slot[]> old = std::exchange(slots_, std::make_unique<slot[]>(capacity));
    const std::size_t old_capacity = std::exchange(capacity_, capacity);
    for (std::size_t i = 0; i < old_capacity; ++i) {
      if (old[i].entry == 0) continue;
      std::size_t j = old[i].hash & mask();
      while (slots_[j].entry != 0) j = (j + 1) & mask();
      slots_[j] = old[i];
    }
    hint_mask_.store(mask(), std::memory_order_relaxed);  // relaxed: only prefetch() reads them
    hint_slots_.store(slots_.get(), std::memory_order_relaxed);
  }

  std::unique_ptr<slot[]> slots_;
  std::size_t capacity_ = 0;  // a power of two, or 0
  std::size_t size_ = 0;      // records and tombstones
  std::atomic<const slot*> hint_slots_{nullptr};  // slots_ and mask(), for prefetch()
  std::atomic<std::size_t> hint_mask_{0};
};

}  // namespace tether::inline v1::detail
