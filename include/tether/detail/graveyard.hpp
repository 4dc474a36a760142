// SPDX-License-Identifier: BSL-1.0
// The ids of evicted task results, by hash, so that such an id reads as expired rather than unknown for a while.
#pragma once

#include <tether/detail/coarse_clock.hpp>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <optional>

namespace tether::inline v1::detail {

/// Remembers the newest `bound` evictions, each as its id's 64-bit hash and the time it happened; older ones are
/// forgotten. The id itself is not kept: an id never submitted whose hash equals an evicted one's (0 and 1 count as
/// equal) reads as expired too, a chance of about one in 2^63 for each evicted id a lookup could meet.
///
/// Evictions go into the newest of five generations, each a flat hash table for a quarter of the bound. When the
/// newest has that many ids, the oldest generation becomes the newest and what it held counts as gone: an entry
/// belongs to its generation only if its eviction number is at least the generation's first. It also turns over
/// when the newest has spanned a quarter of `keep_for` and everything in the oldest is older than `keep_for` (it
/// reads as unknown by then anyway), so that with a bound that is never reached (results kept by time only) only
/// the ids evicted in about the last two `keep_for` are held. The oldest gives way only when nothing it holds can
/// still be needed, so between bound and twice the bound are held once the bound was reached (five quarters when
/// only the count turns generations over). So forgetting costs nothing, neither per id (a tombstone object per id,
/// as before, cost an allocation, a copy of the id and a second cold lookup in the id table to take it out again)
/// nor per generation (nothing is cleared). Each entry
/// keeps its eviction's number, so that find() still sees exactly the newest `bound`. A generation's table grows
/// as it fills, to at most four slots of 24 bytes per id it may hold, and is kept for its next turn: 7.9 MB for a
/// bound of 100,000. Doubling a table copies what it holds, under the caller's lock: about 1 ms at that bound, and
/// 0.1 s for a bound of 10 million, once per generation while the tables grow to their size.
/// **Thread safety:** none; the task registry's retention lock guards it.
class graveyard {
public:
  using time_point = coarse_clock::time_point;

  /// `bound`: how many of the newest evictions are remembered; `keep_for`: how long an eviction counts (older ones
  /// are not found by the task registry, which checks the time).
  graveyard(std::size_t bound, coarse_clock::duration keep_for) noexcept
      : bound_(std::max<std::size_t>(bound, 1)),
        per_generation_(bound_ / 4 + (bound_ % 4 != 0)),
        keep_for_(keep_for),
        span_(keep_for / 4) {}
  graveyard(const graveyard&) = delete;
  graveyard& operator=(const graveyard&) = delete;

  /// Records that the id with this hash was evicted `at`. Without memory for a generation's table, the id may not
  /// be remembered (it reads as unknown instead of expired).
  void add(std::uint64_t hash, time_point at) noexcept {
    const std::uint64_t number = added_++;  // counted even when not remembered, so the window stays exact
    if (turn_due(at)) {
      newest_ = (newest_ + 1) % generations;
      generations_[newest_].count = 0;
      generations_[newest_].first = number;  // what it held is stale from here
    }
    generation& g = generations_[newest_];
    if (g.count == 0) g.first_at = at;
    g.last_at = at;
    if (2 * (g.count + 1) > g.capacity && !g.grow() && g.count + 1 >= g.capacity) return;
    const std::uint64_t key = key_of(hash);
    // Stops at the id, or at a free slot: within a generation nothing is removed, so an id is never past one.
    entry* e = g.probe(key);
    if (!g.holds(*e)) ++g.count;
    *e = {key, number, at};  // the same id evicted again within a generation: the newer eviction counts
  }

  /// When the id with this hash was evicted, if that is among the newest `bound` evictions.
  std::optional<time_point> find(std::uint64_t hash) const noexcept {
    const std::uint64_t key = key_of(hash);
    for (std::size_t age = 0; age < generations; ++age) {  // newest first: a later eviction of the id wins
      const generation& g = generations_[(newest_ + generations - age) % generations];
      if (g.count == 0) continue;
      const entry& e = *g.probe(key);
      if (!g.holds(e)) continue;
      if (added_ - e.number > bound_) return std::nullopt;
      return e.at;
    }
    return std::nullopt;
  }

  /// Starts loading the slot where add(hash) will most likely write.
  void prefetch(std::uint64_t hash) const noexcept {
    const generation& g = generations_[newest_];
    if (g.capacity != 0) __builtin_prefetch(g.slots.get() + (key_of(hash) & (g.capacity - 1)), 1);
  }

  /// Ids held: at least the bound once it was reached, at most twice the bound (five times a quarter of it, rounded
  /// up, when generations turn over by count only).
  std::size_t size() const noexcept {
    std::size_t n = 0;
    for (const generation& g : generations_) n += g.count;
    return n;
  }

private:
  static constexpr std::size_t generations = 5;

  struct entry {
    std::uint64_t key;     ///< the hash, never 0; 0 marks a slot never used
    std::uint64_t number;  ///< which eviction this was, counting from 0
    time_point at;
  };
  struct free_deleter {
    void operator()(entry* p) const noexcept { std::free(p); }
  };
  /// One generation's ids: open addressing with linear probing; at most half full while it can grow.
  struct generation {
    std::unique_ptr<entry, free_deleter> slots;  ///< `capacity` entries, zeroed by calloc
    std::size_t capacity = 0;                    ///< a power of two, or 0
    std::size_t count = 0;                       ///< ids it holds
    std::uint64_t first = 0;                     ///< the first eviction number it holds
    time_point first_at{}, last_at{};            ///< when its first and its latest id were evicted

    bool holds(const entry& e) const noexcept { return e.key != 0 && e.number >= first; }

    /// The slot of `key`, or the free slot where it would go. The table has a free slot.
    entry* probe(std::uint64_t key) const noexcept {
      std::size_t i = key & (capacity - 1);
      while (holds(slots.get()[i]) && slots.get()[i].key != key) i = (i + 1) & (capacity - 1);
      return slots.get() + i;
    }

    /// Doubles the table, keeping what it holds; false without memory.
    bool grow() noexcept {
      const std::size_t doubled = capacity == 0 ? 16 : 2 * capacity;
      entry* made = static_cast<entry*>(std::calloc(doubled, sizeof(entry)));
      if (!made) return false;
      generation bigger;
      bigger.slots.reset(made);
      bigger.capacity = doubled;
      bigger.first = first;
      for (std::size_t i = 0; i < capacity; ++i)
        if (holds(slots.get()[i])) *bigger.probe(slots.get()[i].key) = slots.get()[i];
      slots = std::move(bigger.slots);
      capacity = doubled;
      return true;
    }
  };

  static std::uint64_t key_of(std::uint64_t hash) noexcept { return hash != 0 ? hash : 1; }

  /// Whether the oldest generation gives way: the newest is full or has spanned a quarter of keep_for, and nothing
  /// the oldest holds can still be needed (it has expired, or the other four hold the newest `bound` without it).
  bool turn_due(time_point at) const noexcept {
    const generation& g = generations_[newest_];
    const bool full = g.count >= per_generation_;
    if (!full && (g.count == 0 || at - g.first_at < span_)) return false;
    const generation& oldest = generations_[(newest_ + 1) % generations];
    if (oldest.count == 0 || at - oldest.last_at >= keep_for_) return true;
    // After generations that turned over by time, the others may hold fewer: the newest then grows instead.
    return full && size() - oldest.count >= bound_;
  }

  const std::size_t bound_;
  const std::size_t per_generation_;  // at least 1; the newest `bound` always fit in four of them
  const coarse_clock::duration keep_for_, span_;
  std::array<generation, generations> generations_;
  std::size_t newest_ = 0;
  std::uint64_t added_ = 0;  // evictions so far
};

}  // namespace tether::inline v1::detail
