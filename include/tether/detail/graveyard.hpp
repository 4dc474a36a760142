// SPDX-License-Identifier: BSL-1.0
// The ids of evicted task results, by hash, so that such an id reads as expired rather than unknown for a while.
#pragma once

#include <tether/detail/coarse_clock.hpp>

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <new>
#include <optional>

namespace tether::inline v1::detail {

/// Remembers the newest `bound` evictions, each as its id's 64-bit hash and the time it happened; older ones are
/// forgotten. The id itself is not kept: an id never submitted that shares a hash with an evicted one (a chance of
/// about one in 2^64 per lookup) would read as expired too.
///
/// Evictions go into the newest of five generations, each a flat hash table for a quarter of the bound. When the
/// newest is full, the oldest one is emptied in one go and becomes the newest. So forgetting costs nothing per id,
/// where a tombstone of its own per id cost an allocation, its id's copy, and a second cold lookup in the id table
/// to take it out again; and memory stays within five quarters of the bound. Each entry keeps its eviction's
/// number, so that find() still sees exactly the newest `bound`.
/// **Thread safety:** none; the task registry's retention lock guards it.
class graveyard {
public:
  using time_point = coarse_clock::time_point;

  explicit graveyard(std::size_t bound) noexcept
      : bound_(bound == 0 ? 1 : bound), per_generation_((bound_ + generations - 2) / (generations - 1)) {
    while (capacity_ < 2 * per_generation_) capacity_ *= 2;
  }
  graveyard(const graveyard&) = delete;
  graveyard& operator=(const graveyard&) = delete;

  /// Records that the id with this hash was evicted `at`. Without memory for a generation's table, the id is not
  /// remembered (it reads as unknown instead of expired).
  void add(std::uint64_t hash, time_point at) noexcept {
    if (generations_[newest_].count == per_generation_) {
      newest_ = (newest_ + 1) % generations;
      clear(generations_[newest_]);
    }
    generation& g = generations_[newest_];
    if (!g.slots) g.slots.reset(new (std::nothrow) entry[capacity_]());
    if (!g.slots) return;
    const std::uint64_t key = key_of(hash);
    entry* e = &g.slots[key & mask()];
    while (e->key != 0 && e->key != key) e = &g.slots[(e - g.slots.get() + 1) & mask()];
    if (e->key == 0) ++g.count;
    *e = {key, added_++, at};  // the same id evicted again within a generation: the newer eviction counts
  }

  /// When the id with this hash was evicted, if that is among the newest `bound` evictions.
  std::optional<time_point> find(std::uint64_t hash) const noexcept {
    const std::uint64_t key = key_of(hash);
    for (std::size_t age = 0; age < generations; ++age) {  // newest first: a later eviction of the id wins
      const generation& g = generations_[(newest_ + generations - age) % generations];
      if (!g.slots || g.count == 0) continue;
      for (std::size_t i = key & mask(); g.slots[i].key != 0; i = (i + 1) & mask()) {
        const entry& e = g.slots[i];
        if (e.key != key) continue;
        if (added_ - e.number > bound_) return std::nullopt;
        return e.at;
      }
    }
    return std::nullopt;
  }

  /// Starts loading the slot where add(hash) will most likely write.
  void prefetch(std::uint64_t hash) const noexcept {
    if (const entry* slots = generations_[newest_].slots.get()) __builtin_prefetch(slots + (key_of(hash) & mask()), 1);
  }

  /// Entries held: at most five times a quarter of the bound (rounded up), and at least the bound once reached.
  std::size_t size() const noexcept {
    std::size_t n = 0;
    for (const generation& g : generations_) n += g.count;
    return n;
  }

private:
  static constexpr std::size_t generations = 5;

  struct entry {
    std::uint64_t key;     ///< the hash, never 0; 0 marks an empty slot
    std::uint64_t number;  ///< which eviction this was, counting from 0
    time_point at;
  };
  struct generation {
    std::unique_ptr<entry[]> slots;  ///< capacity_ entries, made on first use
    std::size_t count = 0;
  };

  static std::uint64_t key_of(std::uint64_t hash) noexcept { return hash != 0 ? hash : 1; }
  std::size_t mask() const noexcept { return capacity_ - 1; }

  void clear(generation& g) noexcept {
    if (g.slots) std::memset(static_cast<void*>(g.slots.get()), 0, capacity_ * sizeof(entry));
    g.count = 0;
  }

  const std::size_t bound_;
  const std::size_t per_generation_;  // the newest `bound` always fit in the other four and the newest
  std::size_t capacity_ = 16;         // slots per generation, a power of two at least twice per_generation_
  std::array<generation, generations> generations_;
  std::size_t newest_ = 0;
  std::uint64_t added_ = 0;  // evictions so far
};

}  // namespace tether::inline v1::detail
