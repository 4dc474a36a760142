// SPDX-License-Identifier: BSL-1.0
// Out-of-line definitions for detail/task_registry.hpp.
#pragma once

#include <tether/detail/task_registry.hpp>

#include <algorithm>
#include <memory>

namespace tether::inline v1::detail {

TETHER_DECL task_registry::task_registry(std::chrono::seconds retain_for, std::size_t max_retained)
    : retain_for_(retain_for),
      max_retained_(max_retained),
      max_tombstones_(std::max<std::size_t>(max_retained, 1024)),
      step_(step_for(max_retained)) {}

TETHER_DECL task_registry::~task_registry() {
  // A full registry holds max_retained cold records: overlap their cache misses (the tables do the same).
  constexpr std::size_t ahead = 8;
  for (std::size_t i = 0; i < retained_.size(); ++i) {
    if (i + ahead < retained_.size()) __builtin_prefetch(retained_[i + ahead].record.get(), 1);
    retained_[i].record.reset();
  }
  // The tables still point at the tombstones, but their destructors do not read them.
  for (const grave_ref& g : graves_) delete g.grave;
}

TETHER_DECL task_registry::found task_registry::find(std::string_view id) const {
  const std::uint64_t hash = name_hash(id);
  shard& s = shard_of(hash);
  std::lock_guard lock(s.lock);
  const id_table::slot* slot = s.table.find(id, hash);
  if (!slot) return {};
  if (task_record* r = slot->record()) {
    if (r->has_ended() && expired(*r, coarse_clock::now())) return {nullptr, task_known::expired};
    return {ref<task_record>(r), task_known::live};
  }
  if (coarse_clock::now() - slot->grave()->at < retain_for_) return {nullptr, task_known::expired};
  return {};
}

TETHER_DECL bool task_registry::expired(const task_record& task, time_point now) const noexcept {
  return now - task.ended_at() >= retain_for_;
}

TETHER_DECL void task_registry::retire(task_record& task) {
  // The task has just ended: its end time is "now" closely enough, and saves a clock read.
  time_point now = task.ended_at();
  kept incoming{ref<task_record>(&task), task.hash, now};
  // At most max_rounds batches per call, so that no task's end stalls its worker (after a quiet spell, thousands of
  // results may expire at once). Each call adds one record and takes out up to a whole batch, so the bounds hold,
  // and a backlog is worked off over the next calls; expired results read as expired meanwhile.
  bool more = evict_batch(&incoming, now);
  for (int round = 1; round < max_rounds && more; ++round) more = evict_batch(nullptr, now = coarse_clock::now());
}

TETHER_DECL bool task_registry::evict_batch(kept* incoming, time_point now) {
  // The retention lock only moves entries in and out of the two queues; the table work of an eviction happens
  // under the record's shard lock alone, so that two workers retiring at once rarely wait for each other.
  eviction e;
  const bool graves_due = take_victims(e, incoming, now);
  if (e.due == 0 && !graves_due) return false;
  // Every entry touched below is cold: ask for all of them first, so that the misses overlap.
  for (std::size_t i = 0; i < e.due; ++i) {
    __builtin_prefetch(e.victims[i].record.get(), 1);
    prefetch(e.victims[i].hash);
  }
  grave_ref graves[batch];
  std::size_t buried = 0;
  for (std::size_t i = 0; i < e.due; ++i) {
    if (bury(*e.victims[i].record, now, graves[buried])) ++buried;
    e.victims[i].record.reset();  // outside every lock: it may be the last reference
  }
  take_stale(e, graves, buried, now);
  for (std::size_t i = 0; i < e.old; ++i) {
    __builtin_prefetch(e.stale[i].grave);
    prefetch(e.stale[i].hash);
  }
  for (std::size_t i = 0; i < e.old; ++i) forget(e.stale[i]);
  return e.due == batch || e.old == batch;  // more may be due
}

TETHER_DECL bool task_registry::take_victims(eviction& e, kept* incoming, time_point now) {
  std::lock_guard lock(retention_lock_);
  if (incoming) retained_.push_back(std::move(*incoming));
  const std::size_t over = over_bound(retained_.size(), max_retained_);
  for (; e.due < batch && !retained_.empty() && (e.due < over || now - retained_.front().ended >= retain_for_);
       ++e.due) {
    e.victims[e.due] = std::move(retained_.front());
    retained_.pop_front();
  }
  // The next step's victims are as cold as these were: ask for them now, so that they are in the cache by the
  // next retire(), a few tasks later, instead of stalling it.
  for (std::size_t i = 0; e.due != 0 && i < step_ && i < retained_.size(); ++i) {
    __builtin_prefetch(retained_[i].record.get(), 1);
    prefetch(retained_[i].hash);
  }
  return !graves_.empty() && now - graves_.front().at >= retain_for_;
}

TETHER_DECL void task_registry::take_stale(eviction& e, const grave_ref* fresh, std::size_t n, time_point now) {
  std::lock_guard lock(retention_lock_);
  // In the same turn as the push, so that the bound holds whatever other workers bury meanwhile.
  for (std::size_t i = 0; i < n; ++i) graves_.push_back(fresh[i]);
  const std::size_t over = over_bound(graves_.size(), max_tombstones_);
  for (; e.old < batch && !graves_.empty() && (e.old < over || now - graves_.front().at >= retain_for_); ++e.old) {
    e.stale[e.old] = graves_.front();
    graves_.pop_front();
  }
  for (std::size_t i = 0; e.old != 0 && i < step_ && i < graves_.size(); ++i) {  // as in take_victims()
    __builtin_prefetch(graves_[i].grave);
    prefetch(graves_[i].hash);
  }
}

TETHER_DECL bool task_registry::bury(task_record& task, time_point now, grave_ref& out) {
  shard& s = shard_of(task.hash);
  // Made before taking the lock; dropped unused when a newer submission owns the id now.
  std::unique_ptr<tombstone> grave;
  try {
    grave.reset(new tombstone{task.id, now});
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
  s.table.bury(*slot, *grave);
  out = {task.hash, grave.release(), now};  // graves_ owns it from here
  return true;
}

TETHER_DECL void task_registry::forget(const grave_ref& g) noexcept {
  {
    shard& s = shard_of(g.hash);
    std::lock_guard lock(s.lock);
    // Gone from the table already when its id was submitted again. Its address cannot belong to another
    // tombstone meanwhile: it is freed only here.
    if (id_table::slot* slot = s.table.find(g.hash, g.grave)) s.table.erase(*slot);
  }
  delete g.grave;
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
