// SPDX-License-Identifier: BSL-1.0
// Out-of-line definitions for detail/task_registry.hpp.
#pragma once

#include <tether/detail/task_registry.hpp>

#include <algorithm>
#include <memory>

namespace tether::inline v1::detail {

TETHER_DECL task_registry::task_registry(std::chrono::seconds retain_for, std::size_t max_retained)
    : retain_for_(retain_for), max_retained_(max_retained), max_tombstones_(std::max<std::size_t>(max_retained, 1024)) {}

TETHER_DECL task_registry::~task_registry() {
  // A full registry holds max_retained cold records: overlap their cache misses (the tables do the same).
  constexpr std::size_t ahead = 8;
  for (std::size_t i = 0; i < retained_.size(); ++i) {
    if (i + ahead < retained_.size()) __builtin_prefetch(retained_[i + ahead].get(), 1);
    retained_[i].reset();
  }
}

TETHER_DECL task_registry::found task_registry::find(std::string_view id) const {
  const std::uint64_t hash = std::hash<std::string_view>{}(id);
  shard& s = shard_of(hash);
  std::lock_guard lock(s.lock);
  const id_table::slot* slot = s.table.find(id, hash);
  if (!slot) return {};
  if (task_record* r = slot->record()) {
    if (r->has_ended() && expired(*r, std::chrono::steady_clock::now())) return {nullptr, task_known::expired};
    return {ref<task_record>(r), task_known::live};
  }
  if (std::chrono::steady_clock::now() - slot->grave()->at < retain_for_) return {nullptr, task_known::expired};
  return {};
}

TETHER_DECL bool task_registry::expired(const task_record& task, time_point now) const noexcept {
  // relaxed: read after an acquire load of `status` saw the final status, which was stored after this field.
  const auto ended = time_point(std::chrono::nanoseconds(task.finished_steady_ns.load(std::memory_order_relaxed)));
  return now - ended >= retain_for_;
}

TETHER_DECL void task_registry::retire(task_record& task) {
  // The task has just ended: its end time is "now" closely enough, and saves a clock read. (relaxed: the caller
  // stored the final `status` after it.)
  time_point now(std::chrono::nanoseconds(task.finished_steady_ns.load(std::memory_order_relaxed)));
  {
    std::lock_guard lock(retention_lock_);
    retained_.emplace_back(&task);
  }
  // At most max_rounds batches per call, so that no task's end stalls its worker (after a quiet spell, thousands of
  // results may expire at once). Each call adds one record and takes out up to a whole batch, so the bounds hold,
  // and a backlog is worked off over the next calls; expired results read as expired meanwhile.
  for (int round = 0; round < max_rounds && evict_batch(now); ++round) now = std::chrono::steady_clock::now();
}

TETHER_DECL bool task_registry::evict_batch(time_point now) {
  // The retention lock only moves pointers in and out of the two queues; the table work of an eviction happens
  // under the record's shard lock alone, so that two workers retiring at once rarely wait for each other.
  ref<task_record> victims[batch];
  std::size_t due = 0;
  {
    std::lock_guard lock(retention_lock_);
    for (; due < batch && !retained_.empty() && (retained_.size() > max_retained_ || expired(*retained_.front(), now));
         ++due) {
      victims[due] = std::move(retained_.front());
      retained_.pop_front();
    }
  }
  grave_ref graves[batch];
  std::size_t buried = 0;
  for (std::size_t i = 0; i < due; ++i) {
    if (bury(*victims[i], now, graves[buried])) ++buried;
    victims[i].reset();  // outside every lock: it may be the last reference
  }
  std::size_t stale = 0;
  {
    std::lock_guard lock(retention_lock_);
    for (std::size_t i = 0; i < buried; ++i) graves_.push_back(graves[i]);
    for (; stale < batch && !graves_.empty() &&
           (graves_.size() > max_tombstones_ || now - graves_.front().at >= retain_for_);
         ++stale) {
      graves[stale] = graves_.front();
      graves_.pop_front();
    }
  }
  for (std::size_t i = 0; i < stale; ++i) forget(graves[i]);
  return due == batch || stale == batch;  // more may be due
}

TETHER_DECL bool task_registry::bury(task_record& task, time_point now, grave_ref& out) {
  shard& s = shard_of(task.hash);
  // Made before taking the lock; dropped unused when a newer submission owns the id now.
  std::unique_ptr<tombstone> grave;
  try {
    grave.reset(new tombstone{task.id, now, 0});
  } catch (...) {
    // No memory for a tombstone: the record still goes, and its id reads as unknown instead of expired.
  }
  std::lock_guard lock(s.lock);
  id_table::slot* slot = s.table.find(task);
  if (!slot) return false;
  if (!grave) {
    s.table.erase(*slot);
    return false;
  }
  // The sequence number only needs to differ between the tombstones one id has over time: the record's own
  // generation does (it grows with every submission), and it is known here without another lock.
  grave->seq = task.generation;
  out = {task.hash, grave.get(), grave->seq, now};
  s.table.bury(*slot, std::move(grave));
  return true;
}

TETHER_DECL void task_registry::forget(const grave_ref& g) noexcept {
  shard& s = shard_of(g.hash);
  std::lock_guard lock(s.lock);
  // The tombstone is gone already when its id was submitted again; an equal address is then a newer tombstone,
  // which the sequence number tells apart.
  id_table::slot* slot = s.table.find(g.hash, g.grave);
  if (slot && slot->grave()->seq == g.seq) s.table.erase(*slot);
}

TETHER_DECL std::vector<ref<task_record>> task_registry::collect(
    const std::function<bool(const task_record&)>& keep) const {
  std::vector<ref<task_record>> out;
  for (shard& s : shards_) {
    std::lock_guard lock(s.lock);
    s.table.for_each_record([&](task_record& r) {
      if (keep(r)) out.emplace_back(&r);
    });
  }
  return out;
}

TETHER_DECL std::size_t task_registry::size() const {
  std::size_t n = 0;
  for (shard& s : shards_) {
    std::lock_guard lock(s.lock);
    n += s.table.records();
  }
  return n;
}

}  // namespace tether::inline v1::detail
