// SPDX-License-Identifier: BSL-1.0
// The task manager's id map: records by id in shards, retention of finished results, and tombstones.
#pragma once

#include <tether/config.hpp>
#include <tether/detail/ref_counted.hpp>
#include <tether/detail/task_record.hpp>

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace tether::inline v1::detail {

/// Records by id. A finished record stays for `retain_for` and among the newest `max_retained` finished ones; then
/// it is evicted and leaves a tombstone, so that its id reads as expired rather than unknown, for another
/// `retain_for` (at most max(max_retained, 1024) tombstones are kept). A finished record past `retain_for` reads
/// as expired even before it is evicted: eviction happens when another task finishes.
/// **Thread safety:** every member from any thread. Lock order: retention, then a shard (then the fair queue).
class task_registry {
public:
  using time_point = std::chrono::steady_clock::time_point;
  struct found {
    ref<task_record> record;  ///< null unless known == live
    task_known known = task_known::unknown;
  };

  TETHER_DECL task_registry(std::chrono::seconds retain_for, std::size_t max_retained);

  TETHER_DECL found find(std::string_view id) const;

  /// Files `task` under its id. Under the id's lock, calls `admit(previous)` with the queued or running task that
  /// has the id (nullptr when none); when admit throws, nothing changes.
  template <class Admit>
  void insert(task_record& task, Admit&& admit) {
    shard& s = shard_of(task.id);
    std::lock_guard lock(s.mutex);
    auto it = s.live.find(std::string_view(task.id));
    task_record* previous = it != s.live.end() && !it->second->has_ended() ? it->second.get() : nullptr;
    admit(previous);
    if (it == s.live.end()) {
      s.live.emplace(std::string_view(task.id), ref<task_record>(&task));
    } else {
      // The key views the old record's id: re-point it at the new record's own string.
      auto node = s.live.extract(it);
      node.key() = std::string_view(task.id);
      node.mapped() = ref<task_record>(&task);
      s.live.insert(std::move(node));
    }
    if (!s.tombstones.empty()) s.tombstones.erase(task.id);
  }

  /// A task ended: keeps its record and evicts what is past the bounds.
  TETHER_DECL void retire(task_record& task);

  /// The records `keep` accepts, from every shard.
  TETHER_DECL std::vector<ref<task_record>> collect(const std::function<bool(const task_record&)>& keep) const;

  /// True for a finished record older than retain_for.
  TETHER_DECL bool expired(const task_record& task, time_point now) const noexcept;

  /// Records in the map: queued, running and retained ones.
  TETHER_DECL std::size_t size() const;

private:
  struct shard {
    mutable std::mutex mutex;
    // The standard hashes, because libstdc++ caches their values in the nodes (it does not for a custom hash), and
    // re-hashing every id along a bucket made the lookups the most expensive part of a task.
    std::unordered_map<std::string_view, ref<task_record>> live;  // keys view record ids
    std::unordered_map<std::string, time_point> tombstones;       // id -> evicted at
  };
  struct tombstone {
    std::string id;
    time_point at;
  };

  static constexpr std::size_t shard_count = 64;

  shard& shard_of(std::string_view id) const noexcept {
    return shards_[std::hash<std::string_view>{}(id) % shard_count];
  }
  TETHER_DECL void evict(task_record& task, time_point now);
  TETHER_DECL void forget_tombstones(time_point now);

  const std::chrono::steady_clock::duration retain_for_;
  const std::size_t max_retained_;
  const std::size_t max_tombstones_;
  mutable std::array<shard, shard_count> shards_;
  std::mutex retention_mutex_;
  std::deque<ref<task_record>> retained_;  // finish order; guarded by retention_mutex_
  std::deque<tombstone> tombstone_order_;  // eviction order; guarded by retention_mutex_
};

}  // namespace tether::inline v1::detail

#if TETHER_HEADER_ONLY
#  include <tether/impl/task_registry.ipp>
#endif
