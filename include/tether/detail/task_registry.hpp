// SPDX-License-Identifier: BSL-1.0
// The task manager's id map: records by id in shards, retention of finished results, and tombstones.
#pragma once

#include <tether/config.hpp>
#include <tether/detail/coarse_clock.hpp>
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
#include <vector>

namespace tether::inline v1::detail {

/// Records by id. A finished record stays for `retain_for` and among the newest `max_retained` finished ones; then
/// it is evicted and leaves a tombstone, so that its id reads as expired rather than unknown, for another
/// `retain_for` (at most max(max_retained, 1024) tombstones are kept). A finished record past `retain_for` reads
/// as expired even before it is evicted: eviction happens when another task finishes. Past 4,096 retained results,
/// eviction goes 8 at a time (so up to 7 fewer than max_retained may be kept): the evicted records, their table
/// slots and tombstones are cold, and a batch lets their cache misses overlap.
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
  /// Releases every record and tombstone.
  TETHER_DECL ~task_registry();
  task_registry(const task_registry&) = delete;
  task_registry& operator=(const task_registry&) = delete;

  TETHER_DECL found find(std::string_view id) const;

  /// A hint, without the lock: starts loading the table slot where an id with this hash would be.
  void prefetch(std::uint64_t hash) const noexcept { shard_of(hash).table.prefetch(hash); }

  /// Files `task` under its id. Under the id's lock, calls `admit(previous)` with the queued or running task that
  /// has the id (nullptr when none); when admit throws, nothing changes.
  template <class Admit>
  void insert(task_record& task, Admit&& admit) {
    shard& s = shard_of(task.hash);
    std::lock_guard lock(s.lock);
    id_table::slot* slot = s.table.find(task.id, task.hash);
    task_record* live = slot ? slot->record() : nullptr;
    if (!slot) s.table.reserve_one();  // before admit: once admitted, filing the task must not fail
    admit(live && !live->has_ended() ? live : nullptr);
    if (slot) s.table.replace(*slot, task);  // a finished record or a tombstone goes; a live one was replaced
    else s.table.insert(task);
  }

  /// A task ended: keeps its record and evicts what is past the bounds.
  TETHER_DECL void retire(task_record& task);

  /// The records `keep` accepts, from every shard.
  TETHER_DECL std::vector<ref<task_record>> collect(const std::function<bool(const task_record&)>& keep) const;

  /// True for a finished record older than retain_for.
  TETHER_DECL bool expired(const task_record& task, time_point now) const noexcept;

  /// Records in the map: queued, running and retained ones.
  TETHER_DECL std::size_t size() const;
  /// Tombstones kept: at most max(max_retained, 1024) whenever no retire() is between its two steps.
  std::size_t tombstones() const {
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
    mutable spin_lock lock;
    id_table table;
  };
  /// A tombstone in eviction order, which owns it; `grave` is only compared, never read, until found in its
  /// shard again (the registry frees a tombstone only after taking it out of its table).
  struct grave_ref {
    std::uint64_t hash;
    tombstone* grave;
    time_point at;
  };

  static constexpr std::size_t shard_count = 64;
  /// Evictions done per turn of the retention lock at most, and turns per retire().
  static constexpr std::size_t batch = 16;
  static constexpr int max_rounds = 4;
  /// How many records a full registry evicts at once: 1 (exact) up to 4,096 retained results, else 8.
  static std::size_t step_for(std::size_t max_retained) noexcept { return max_retained < 4096 ? 1 : 8; }
  /// How many entries to take out of a queue of `size` kept to `bound`: past the bound, a whole step goes at
  /// once, so the size never passes the bound.
  std::size_t over_bound(std::size_t size, std::size_t bound) const noexcept {
    return size > bound ? size - bound + step_ - 1 : 0;
  }

  shard& shard_of(std::uint64_t hash) const noexcept { return shards_[hash >> 58]; }  // the table uses the low bits
  static_assert(shard_count == 64, "shard_of() takes the top six bits of the hash");

  /// Keeps `incoming` (when given), evicts one batch of what is past the bounds and forgets one batch of old
  /// tombstones; true when more may be due.
  TETHER_DECL bool evict_batch(kept* incoming, time_point now);
  /// What one evict_batch() takes out of the two queues.
  struct eviction {
    kept victims[batch];
    grave_ref stale[batch];
    std::size_t due = 0, old = 0;
  };
  /// Under the retention lock: keeps `incoming` and takes the records due for eviction; true when a tombstone is
  /// past retain_for.
  TETHER_DECL bool take_victims(eviction& e, kept* incoming, time_point now);
  /// Under the retention lock: adds the `n` new tombstones, then takes those past the bounds.
  TETHER_DECL void take_stale(eviction& e, const grave_ref* fresh, std::size_t n, time_point now);
  TETHER_DECL bool bury(task_record& task, time_point now, grave_ref& out);
  TETHER_DECL void forget(const grave_ref& g) noexcept;

  const std::chrono::steady_clock::duration retain_for_;
  const std::size_t max_retained_;
  const std::size_t max_tombstones_;
  const std::size_t step_;
  mutable std::array<shard, shard_count> shards_;
  mutable spin_lock retention_lock_;
  std::deque<kept> retained_;              // finish order; guarded by retention_lock_
  std::deque<grave_ref> graves_;           // eviction order; guarded by retention_lock_
};

}  // namespace tether::inline v1::detail

#if TETHER_HEADER_ONLY
#  include <tether/impl/task_registry.ipp>
#endif
