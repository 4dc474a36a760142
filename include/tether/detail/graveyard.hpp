// SPDX-License-Identifier: BSL-1.0
// The ids of evicted task results, by hash, so that such an id reads as expired rather than unknown for a while.
#pragma once

#include <tether/detail/coarse_clock.hpp>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>

namespace tether::inline v1::detail {

/// Where a graveyard's logs and indexes come from: the C allocator (they are freed with std::free), or in tests one
/// that fails on demand.
struct graveyard_memory {
  void* (*zeroed)(std::size_t count, std::size_t size) noexcept = [](std::size_t count, std::size_t size) noexcept {
    return std::calloc(count, size);
  };
  void* (*resized)(void* block, std::size_t size) noexcept = [](void* block, std::size_t size) noexcept {
    return std::realloc(block, size);
  };
};

/// Remembers the newest `bound` evictions, each as its id's 64-bit hash and the time it happened; older ones are
/// forgotten. The id itself is not kept: an id never submitted whose hash equals an evicted one's (0 and 1 count as
/// equal) reads as expired too, a chance of about one in 2^63 for each evicted id a lookup could meet.
///
/// Evictions go into the newest of five generations, each for a quarter of the bound. When the newest has that
/// many, the oldest generation is emptied and becomes the newest. It also turns over when the newest has spanned a
/// quarter of `keep_for` and everything in the oldest is older than `keep_for` (it reads as unknown by then anyway),
/// so that with a bound that is never reached (results kept by time only) only the evictions of about the last two
/// `keep_for` are held. The oldest gives way only when nothing it holds can still be needed, so between bound and
/// twice the bound are held once the bound was reached (five quarters when only the count turns generations over).
///
/// A generation is a log and an index. The log holds {hash, time} in eviction order, written one after the other;
/// an eviction's number is its generation's first plus its place in the log, so find() sees exactly the newest
/// `bound`. The index is a flat table of 8-byte slots {tag, place in the log}, at most half full, and the only
/// memory an eviction writes at random: 0.5 MB per generation at the default bound, against 1.5 MB when each slot
/// held the whole entry (24 bytes). At the retention bound every finished task evicts one id, so this write misses
/// the cache on every task: adding 300,000 random ids at a bound of 100,000 took 50 ns each on average, not 124.
/// **Thread safety:** none; the task registry's retention lock guards it.
class graveyard {
public:
  using time_point = coarse_clock::time_point;

  using memory = graveyard_memory;

  /// `bound`: how many of the newest evictions are remembered; `keep_for`: how long an eviction counts (older ones
  /// are not found by the task registry, which checks the time).
  graveyard(std::size_t bound, coarse_clock::duration keep_for, memory from = {}) noexcept
      : bound_(std::max<std::size_t>(bound, 1)),
        per_generation_(bound_ / 4 + (bound_ % 4 != 0)),
        keep_for_(keep_for),
        span_(keep_for / 4),
        memory_(from) {}
  graveyard(const graveyard&) = delete;
  graveyard& operator=(const graveyard&) = delete;

  /// Records that the id with this hash was evicted `at`. Without memory for a generation's log or index, the
  /// eviction may not be remembered (the id reads as unknown instead of expired).
  void add(std::uint64_t hash, time_point at) noexcept {
    const std::uint64_t number = added_++;  // counted even when not remembered, so the window stays exact
    if (turn_due(at)) {
      newest_ = (newest_ + 1) % generations;
      generations_[newest_].empty_out(number, memory_);
    }
    generation& g = generations_[newest_];
    if (g.count == 0) g.first_at = at;
    g.last_at = std::max(g.last_at, at);  // two workers' evictions may come a little out of order
    // Without memory for this one, none after it goes into this generation either (turn_due() turns a sealed one
    // over): a place in the log is what numbers an eviction, so a gap would misnumber every later one.
    if (!g.make_room(memory_)) {
      g.sealed = true;
      return;
    }
    const std::uint64_t key = key_of(hash);
    // The same id evicted again within a generation: its slot now names the newer eviction.
    *g.probe(key) = g.slot_for(key, g.count);
    g.log.get()[g.count++] = {key, at};
  }

  /// When the id with this hash was evicted, if that is among the newest `bound` evictions.
  std::optional<time_point> find(std::uint64_t hash) const noexcept {
    const std::uint64_t key = key_of(hash);
    for (std::size_t age = 0; age < generations; ++age) {  // newest first: a later eviction of the id wins
      const generation& g = generations_[(newest_ + generations - age) % generations];
      if (g.count == 0) continue;
      const std::uint64_t slot = *g.probe(key);
      if (slot == 0) continue;
      const std::uint64_t place = generation::place_of(slot);
      if (added_ - (g.first + place) > bound_) return std::nullopt;
      return g.log.get()[place].at;
    }
    return std::nullopt;
  }

  /// Starts loading the index slot where add(hash) will most likely write.
  void prefetch(std::uint64_t hash) const noexcept {
    const generation& g = generations_[newest_];
    if (g.capacity != 0) __builtin_prefetch(g.index.get() + (key_of(hash) & (g.capacity - 1)), 1);
  }

  /// Evictions held: at least the bound once it was reached, at most twice the bound (five times a quarter of it,
  /// rounded up, when generations turn over by count only).
  std::size_t size() const noexcept {
    std::size_t n = 0;
    for (const generation& g : generations_) n += g.count;
    return n;
  }

private:
  static constexpr std::size_t generations = 5;

  struct logged {
    std::uint64_t key;  ///< the hash, never 0
    time_point at;
  };
  struct free_deleter {
    void operator()(void* p) const noexcept { std::free(p); }
  };

  /// One generation: its evictions in order, and an index from hash to the latest of them.
  struct generation {
    /// A slot is the hash's top 24 bits (a tag, so that a probe rarely reads the log) and the place in the log
    /// plus one, in the low 40 bits; 0 is a free slot.
    static constexpr int place_bits = 40;
    static constexpr std::uint64_t place_mask = (std::uint64_t{1} << place_bits) - 1;

    std::unique_ptr<std::uint64_t, free_deleter> index;  ///< `capacity` slots, zeroed
    std::unique_ptr<logged, free_deleter> log;           ///< `log_capacity` entries, `count` of them used
    std::size_t capacity = 0;                            ///< a power of two, or 0
    std::size_t log_capacity = 0;
    std::size_t count = 0;                               ///< evictions it holds (an id may repeat)
    bool sealed = false;                                 ///< memory ran out: it takes no more until emptied
    std::uint64_t first = 0;                             ///< the number of the eviction in log[0]
    time_point first_at{}, last_at{};                    ///< when its first and its latest eviction happened

    static std::uint64_t place_of(std::uint64_t slot) noexcept { return (slot & place_mask) - 1; }
    static std::uint64_t slot_for(std::uint64_t key, std::size_t place) noexcept {
      return (key & ~place_mask) | (place + 1);
    }

    /// The slot of `key`, or the free slot where it would go. The index has a free slot.
    std::uint64_t* probe(std::uint64_t key) const noexcept {
      std::uint64_t* slots = index.get();
      for (std::size_t i = key & (capacity - 1);; i = (i + 1) & (capacity - 1)) {
        const std::uint64_t slot = slots[i];
        if (slot == 0) return slots + i;
        if ((slot & ~place_mask) == (key & ~place_mask) && log.get()[place_of(slot)].key == key) return slots + i;
      }
    }

    /// Forgets what it holds; the next eviction it takes has number `next`.
    void empty_out(std::uint64_t next, const memory& from) noexcept {
      if (count != 0) {
        // A fresh zeroed index rather than clearing this one: a large one then comes from the kernel as zero pages,
        // faulted in as evictions reach them, instead of tens of megabytes written under the caller's lock (at a
        // bound of ten million). A small one is cleared by calloc all the same (0.5 MB at the default bound).
        if (auto* fresh = static_cast<std::uint64_t*>(from.zeroed(capacity, sizeof(std::uint64_t))))
          index.reset(fresh);
        else
          std::memset(index.get(), 0, capacity * sizeof(std::uint64_t));
      }
      count = 0;
      first = next;
      sealed = false;
    }

    /// Room for one more eviction in the log and the index (which stays at most half full); false without memory.
    bool make_room(const memory& from) noexcept {
      if (count == place_mask) return false;  // a trillion evictions in one generation: the rest are not kept
      if (count == log_capacity) {
        const std::size_t more = log_capacity == 0 ? 16 : 2 * log_capacity;
        void* grown = from.resized(log.get(), more * sizeof(logged));
        if (!grown) return false;
        (void)log.release();  // realloc moved or freed the old block
        log.reset(static_cast<logged*>(grown));
        log_capacity = more;
      }
      if (2 * (count + 1) <= capacity) return true;
      const std::size_t doubled = capacity == 0 ? 16 : 2 * capacity;
      auto* made = static_cast<std::uint64_t*>(from.zeroed(doubled, sizeof(std::uint64_t)));
      if (!made) return count + 1 < capacity;  // a fuller index still works while a slot stays free
      index.reset(made);
      capacity = doubled;
      for (std::size_t place = 0; place < count; ++place)
        *probe(log.get()[place].key) = slot_for(log.get()[place].key, place);
      return true;
    }
  };

  static std::uint64_t key_of(std::uint64_t hash) noexcept { return hash != 0 ? hash : 1; }

  /// Whether the oldest generation gives way: the newest is full or has spanned a quarter of keep_for, and nothing
  /// the oldest holds can still be needed (it has expired, or the other four hold the newest `bound` without it).
  /// A sealed newest one (out of memory) takes no more, so the oldest gives way at once: otherwise, with the others
  /// short of the bound, every later eviction would be dropped until the oldest expired. A generation emptied for
  /// reuse keeps its memory, so evictions are remembered again at once, even if memory stays short.
  bool turn_due(time_point at) const noexcept {
    const generation& g = generations_[newest_];
    if (g.sealed) return true;
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
  const memory memory_;
};

}  // namespace tether::inline v1::detail
