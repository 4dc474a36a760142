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

/// Open addressing with linear probing over 8-byte slots, each a record's address with the low 16 bits of its id's
/// hash above it. A lookup reads one cache line of the array, mostly, and reads a record only when those bits match.
/// (A node-based std::unordered_map took a cache miss per node, and its lookups were the largest cost of a task.
/// Slots of {hash, record}, 16 bytes, made the tables twice as large: at the default retention bound 4 to 8 MB,
/// and a submit's slot was then mostly out of the cache; see docs/task_manager.md.) The table owns one reference to
/// each record. Records must lie below 2^48, as every user-space address does on 64-bit Linux unless an allocator
/// asks for a higher one: fits() tells.
/// **Thread safety:** none; the registry's shard lock guards it.
class id_table {
public:
  static_assert(sizeof(void*) == 8, "a slot packs a 48-bit address and 16 bits of hash into 64 bits");
  class slot {
  public:
    /// nullptr: empty.
    task_record* record() const noexcept { return reinterpret_cast<task_record*>(bits_ & address_mask); }

  private:
    friend class id_table;
    static constexpr int address_bits = 48;
    static constexpr std::uint64_t address_mask = (std::uint64_t{1} << address_bits) - 1;
    static constexpr std::size_t tag_values = std::size_t{1} << (64 - address_bits);
    static std::uint64_t tag_of(std::uint64_t hash) noexcept { return hash & (tag_values - 1); }
    std::uint64_t tag() const noexcept { return bits_ >> address_bits; }
    void set(task_record& record) noexcept {
      bits_ = tag_of(record.hash) << address_bits | reinterpret_cast<std::uintptr_t>(&record);
    }
    std::uint64_t bits_ = 0;
  };

  static_assert(sizeof(slot) == 8, "the registry's prefetch hint counts slots of 8 bytes");

  /// Whether the table can hold `record`: its address fits in 48 bits. (Not where the hardware keeps tags in the
  /// top byte of pointers, such as Arm's memory tagging when enabled: submit then throws invalid_argument.)
  static bool fits(const task_record& record) noexcept {
    return (reinterpret_cast<std::uintptr_t>(&record) & ~slot::address_mask) == 0;
  }

  /// `hint` is where the table tells prefetch() callers where its array is; it must outlive the table.
  explicit id_table(table_hint& hint) noexcept : hint_(hint) {}
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

  /// The slot holding `id`, or nullptr.
  slot* find(std::string_view id, std::uint64_t hash) noexcept {
    if (capacity_ == 0) return nullptr;
    const std::uint64_t tag = slot::tag_of(hash);
    for (std::size_t i = hash & mask(); slots_[i].record(); i = (i + 1) & mask()) {
      const slot& s = slots_[i];
      if (s.tag() == tag && s.record()->hash == hash && s.record()->id == id) return &slots_[i];
    }
    return nullptr;
  }

  /// The slot holding exactly this record, or nullptr (another submission has its id now).
  slot* find(const task_record& record) noexcept {
    if (capacity_ == 0) return nullptr;
    for (std::size_t i = record.hash & mask(); slots_[i].record(); i = (i + 1) & mask())
      if (slots_[i].record() == &record) return &slots_[i];
    return nullptr;
  }

  /// Makes room for one more entry, so that the insert after it cannot fail. Throws bad_alloc.
  void reserve_one() {
    if ((size_ + 1) * 2 > capacity_) grow();
  }

  /// Files `record` (whose id is not in the table, and which fits()) and takes a reference to it. Call reserve_one()
  /// first.
  void insert(task_record& record) noexcept {
    std::size_t i = record.hash & mask();
    while (slots_[i].record()) i = (i + 1) & mask();
    intrusive_ptr_add_ref(&record);
    slots_[i].set(record);
    ++size_;
  }

  /// Puts `record` (which fits()) in place of the record `s` holds (the same id); returns that one with the table's
  /// reference.
  [[nodiscard]] task_record* replace(slot& s, task_record& record) noexcept {
    intrusive_ptr_add_ref(&record);
    task_record* old = s.record();
    s.set(record);
    return old;
  }

  /// Empties `s`, releasing what it held, and moves later entries of its probe run back into the gap.
  void erase(slot& s) noexcept {
    release(s);
    std::size_t hole = static_cast<std::size_t>(&s - slots_.get());
    for (std::size_t i = (hole + 1) & mask(); slots_[i].record(); i = (i + 1) & mask()) {
      const std::size_t home = home_of(slots_[i]);
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
      if (task_record* r = slots_[i].record()) fn(*r);
  }

  std::size_t records() const noexcept { return size_; }

private:
  std::size_t mask() const noexcept { return capacity_ - 1; }

  /// Where the entry in `s` belongs. The slot's 16 bits of hash tell in all but tables of over 65,536 slots (over
  /// four million records in the registry's 64), where the record has to be read.
  std::size_t home_of(const slot& s) const noexcept {
    return (capacity_ <= slot::tag_values ? s.tag() : s.record()->hash) & mask();
  }

  static void release(slot& s) noexcept {
    if (task_record* r = s.record()) intrusive_ptr_release(r);
    s = slot();
  }

  void grow() {
    const std::size_t capacity = capacity_ == 0 ? 16 : capacity_ * 2;
    std::unique_ptr<slot[]> old = std::exchange(slots_, std::make_unique<slot[]>(capacity));
    const std::size_t old_capacity = std::exchange(capacity_, capacity);
    for (std::size_t i = 0; i < old_capacity; ++i) {
      if (!old[i].record()) continue;
      std::size_t j = home_of(old[i]);
      while (slots_[j].record()) j = (j + 1) & mask();
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
