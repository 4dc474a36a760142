// SPDX-License-Identifier: BSL-1.0
// The task manager's id map: records by id in shards, retention of finished results, and evicted ids.
#pragma once

#include <tether/config.hpp>
#include <tether/detail/coarse_clock.hpp>
#include <tether/detail/graveyard.hpp>
#include <tether/detail/id_table.hpp>
#include <tether/detail/ref_counted.hpp>
#include <tether/detail/spin_lock.hpp>
#include <tether/detail/task_record.hpp>

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <string_view>
#include <utility>
#include <vector>

namespace tether::inline v1::detail {

/// Records by id. A finished record stays for `retain_for` and among the newest `max_retained` finished ones; then
/// it is evicted, and its id reads as expired rather than unknown for another `retain_for`, as long as it is among
/// the newest max(max_retained, 1024) evictions (see graveyard). A finished record past `retain_for` reads as
/// expired even before it is evicted: eviction happens when another task finishes. Past 4,096 retained results,
/// eviction goes 8 at a time (so up to 7 fewer than max_retained may be kept): the evicted records and their table
/// slots are cold, and a batch lets their cache misses overlap.
/// **Thread safety:** every member from any thread. Locks: a shard, then the fair queue (inside insert's admit);
/// the retention lock is never held together with another.
class task_registry {
public:
  using time_point = coarse_clock::time_point;
  struct found {
    ref<task_record> record;  ///< null unless known == live
    task_known known = task_known::unknown;
  };

  TETHER_DECL task_registry(std::chrono::seconds retain_for, std::size_t max_retained);
  /// Releases every record.
  TETHER_DECL ~task_registry();
  task_registry(const task_registry&) = delete;
  task_registry& operator=(const task_registry&) = delete;

  TETHER_DECL found find(std::string_view id) const;

  /// A hint, without the lock: starts loading the table slot where an id with this hash would be, and its shard's
  /// lock, so that the two misses overlap instead of coming one after the other.
  void prefetch(std::uint64_t hash) const noexcept {
    hints_[hash >> 58].prefetch(hash, sizeof(id_table::slot));
    __builtin_prefetch(&shard_of(hash), 1);
  }

  /// Files `task` under its id. Under the id's lock, calls `admit(previous)` with the queued or running task that
  /// has the id (nullptr when none); when admit throws, nothing changes. Throws invalid_argument for a record that
  /// the tables cannot hold (see id_table::fits()).
  template <class Admit>
  void insert(task_record& task, Admit&& admit) {
    if (!id_table::fits(task)) [[unlikely]]
      raise(errc::invalid_argument,
            "tether::task_manager::submit: task '{}' was allocated at {}, above the 48-bit addresses the registry "
            "can hold (an allocator that maps memory that high)",
            task.id, static_cast<const void*>(&task));
    shard& s = shard_of(task.hash);
    // Released after the lock: an evictor that saw the record superseded may have let go of it already, and a
    // record's destructor runs user code (its result's and its context's).
    ref<task_record> gone;
    std::lock_guard lock(s.lock);
    id_table::slot* slot = s.table.find(task.id, task.hash);
    task_record* live = slot ? slot->record() : nullptr;
    if (!slot) s.table.reserve_one();  // before admit: once admitted, filing the task must not fail
    admit(live && !live->has_ended() ? live : nullptr);
    if (slot) {  // a finished record goes; a live one was replaced
      slot->record()->superseded.store(true, std::memory_order_relaxed);
      gone.reset(s.table.replace(*slot, task), false);
    } else {
      s.table.insert(task);
    }
  }

  /// A task ended: keeps its record and evicts what is past the bounds.
  TETHER_DECL void retire(task_record& task);

  /// The records `keep` accepts, from every shard.
  TETHER_DECL std::vector<ref<task_record>> collect(const std::function<bool(const task_record&)>& keep) const;

  /// True for a finished record older than retain_for.
  TETHER_DECL bool expired(const task_record& task, time_point now) const noexcept;

  /// Records in the map: queued, running and retained ones.
  TETHER_DECL std::size_t size() const;
  /// Evictions remembered, an id once per eviction (memory, not what reads as expired): see graveyard::size().
  std::size_t evicted_ids() const {
    std::lock_guard lock(retention_lock_);
    return graves_.size();
  }

private:
  /// A retained record with what eviction needs to know without touching it.
  struct kept {
    ref<task_record> record;
    std::uint64_t hash;
    time_point ended;
  };
  /// A cache line each: a submitter and a worker evicting from a neighbouring shard must not share one.
  struct alignas(64) shard {
    explicit shard(table_hint& hint) noexcept : table(hint) {}
    mutable spin_lock lock;
    id_table table;
  };
  static constexpr std::size_t shard_count = 64;
  /// Evictions done per turn of the retention lock at most, and turns per retire().
  static constexpr std::size_t batch = 16;
  static constexpr int max_rounds = 4;
  /// How many records a full registry evicts at once: 1 (exact) up to 4,096 retained results, else 8.
  static std::size_t step_for(std::size_t max_retained) noexcept { return max_retained < 4096 ? 1 : 8; }
  /// How many results to evict from `size` retained ones: past max_retained, a whole step goes at once, so the
  /// size never passes the bound.
  std::size_t over_bound(std::size_t size) const noexcept {
    return size > max_retained_ ? size - max_retained_ + step_ - 1 : 0;
  }

  template <std::size_t... I>
  static std::array<shard, shard_count> make_shards(std::array<table_hint, shard_count>& hints,
                                                    std::index_sequence<I...>) noexcept {
    return {shard(hints[I])...};
  }
  shard& shard_of(std::uint64_t hash) const noexcept { return shards_[hash >> 58]; }  // the table uses the low bits
  static_assert(shard_count == 64, "shard_of() takes the top six bits of the hash");

  /// Keeps `incoming` (when given) and evicts one batch of what is past the bounds; true when more may be due.
  TETHER_DECL bool evict_batch(kept* incoming, time_point now);
  /// A record taken out of retention, with the reference retention held. Trivial, so that a batch of them costs
  /// nothing to set up: every retire() has one, and most take out nothing.
  struct victim {
    task_record* record;
    std::uint64_t hash;
  };
  /// Under the retention lock: keeps `incoming` and takes up to a batch of records due for eviction into
  /// `victims`, without reading them; returns how many.
  TETHER_DECL std::size_t take_victims(victim (&victims)[batch], kept* incoming, time_point now);
  /// Takes `task` out of its shard's table, unless a newer submission has its id now.
  TETHER_DECL void unfile(const task_record& task) noexcept;

  const std::chrono::steady_clock::duration retain_for_;
  const std::size_t max_retained_;
  const std::size_t step_;
  std::array<table_hint, shard_count> hints_;  // before shards_, which refer to them; written only when a table grows
  mutable std::array<shard, shard_count> shards_;
  mutable spin_lock retention_lock_;
  std::deque<kept> retained_;  // finish order; guarded by retention_lock_
  graveyard graves_;           // guarded by retention_lock_
  std::size_t ahead_turn_ = 0;  // which future victim take_victims() prefetches next; guarded by retention_lock_
};

}  // namespace tether::inline v1::detail

#if TETHER_HEADER_ONLY
#  include <tether/impl/task_registry.ipp>
#endif
