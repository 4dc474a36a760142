// SPDX-License-Identifier: BSL-1.0
// Out-of-line definitions for detail/task_registry.hpp.
#pragma once

#include <tether/detail/task_registry.hpp>

#include <algorithm>
#include <memory>
#include <optional>

namespace tether::inline v1::detail {

TETHER_DECL task_registry::task_registry(std::chrono::seconds retain_for, std::size_t max_retained)
    // In the clocks' nanoseconds, from 0 to a century: "for ever" (seconds::max()) must not overflow.
    : retain_for_(std::clamp<std::chrono::seconds>(retain_for, {}, std::chrono::hours(24 * 36525))),
      max_retained_(max_retained),
      step_(step_for(max_retained)),
      shards_(make_shards(hints_, std::make_index_sequence<shard_count>())),
      graves_(std::max<std::size_t>(max_retained, 1024), retain_for_) {}

TETHER_DECL task_registry::~task_registry() {
  // A full registry holds max_retained cold records: overlap their cache misses (the tables do the same).
  constexpr std::size_t ahead = 8;
  for (std::size_t i = 0; i < retained_.size(); ++i) {
    if (i + ahead < retained_.size()) __builtin_prefetch(retained_[i + ahead].record.get(), 1);
    retained_[i].record.reset();
  }
}

TETHER_DECL task_registry::found task_registry::find(std::string_view id) const {
  const std::uint64_t hash = name_hash(id);
  {
    shard& s = shard_of(hash);
    std::lock_guard lock(s.lock);
    if (const id_table::slot* slot = s.table.find(id, hash)) {
      task_record* r = slot->record();
      if (r->has_ended() && expired(*r, coarse_clock::now())) return {nullptr, task_known::expired};
      return {ref<task_record>(r), task_known::live};
    }
  }
  // Not filed: evicted, or never known. An eviction remembers the id before it takes the record out of its table,
  // so an id being evicted right now is found in one place or the other.
  std::optional<time_point> evicted;
  {
    std::lock_guard lock(retention_lock_);
    evicted = graves_.find(hash);
  }
  if (evicted && coarse_clock::now() - *evicted < retain_for_) return {nullptr, task_known::expired};
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
  // The retention lock only moves entries in and out of the queue and the graveyard; nothing under it reads a
  // victim, whose lines are out of the cache. The table work happens under the record's shard lock alone, so that
  // two workers retiring at once rarely wait for each other.
  victim victims[batch];
  const std::size_t due = take_victims(victims, incoming, now);
  if (due == 0) return false;
  // take_victims() asked for each of these a step ahead; after a quiet spell (no step ahead) they are cold: ask for
  // all of them first, so that the misses overlap. Lines already in the cache cost next to nothing here.
  for (std::size_t i = 0; i < due; ++i) {
    victims[i].record->prefetch_lines();
    prefetch(victims[i].hash);
  }
  // A record whose id a newer submission holds is not in the table: its id is not gone, and must not take a place
  // among the newest evictions (an id resubmitted a thousand times would push every other evicted id out).
  bool gone[batch];
  bool any_gone = false;
  for (std::size_t i = 0; i < due; ++i) {
    gone[i] = !victims[i].record->superseded.load(std::memory_order_relaxed);
    any_gone |= gone[i];
  }
  if (any_gone) {
    // Before the records leave their tables (in unfile()), so that a lookup meanwhile finds each in one or the
    // other. Checking `superseded` under the first turn of the lock instead held it through a cache miss per
    // victim, while the other worker spun on it.
    std::lock_guard lock(retention_lock_);
    for (std::size_t i = 0; i < due; ++i)
      if (gone[i]) graves_.add(victims[i].hash, now);
  }
  for (std::size_t i = 0; i < due; ++i) {
    if (gone[i]) unfile(*victims[i].record);
    intrusive_ptr_release(victims[i].record);  // retention's reference, outside every lock: it may be the last
  }
  return due == batch;  // more may be due
}

TETHER_DECL std::size_t task_registry::take_victims(victim (&victims)[batch], kept* incoming, time_point now) {
  std::lock_guard lock(retention_lock_);
  if (incoming) retained_.push_back(std::move(*incoming));
  const std::size_t over = over_bound(retained_.size());
  std::size_t due = 0;
  for (; due < batch && !retained_.empty() && (due < over || now - retained_.front().ended >= retain_for_); ++due) {
    victims[due] = {retained_.front().record.detach(), retained_.front().hash};
    retained_.pop_front();
  }
  // Future victims are as cold as these were. Each retire() asks for one of the step after next, so that every
  // victim's lines are in the cache a step before it goes: one at a time, because asking for a whole step's
  // records at once (dozens of lines) overflowed what the core tracks, and those prefetches were dropped.
  if (step_ > 1) {
    const std::size_t ahead = step_ + (ahead_turn_++ % step_);
    if (ahead < retained_.size()) {
      retained_[ahead].record->prefetch_lines();
      prefetch(retained_[ahead].hash);
      graves_.prefetch(retained_[ahead].hash);
    }
    // The queue's own entries are as cold, and reading one above stalled under the lock: ask for them well ahead
    // (a line holds under three; each line is asked for a few times, which costs next to nothing).
    if (ahead + 64 < retained_.size()) __builtin_prefetch(&retained_[ahead + 64]);
  }
  return due;
}

TETHER_DECL void task_registry::unfile(const task_record& task) noexcept {
  shard& s = shard_of(task.hash);
  std::lock_guard lock(s.lock);
  if (id_table::slot* slot = s.table.find(task)) s.table.erase(*slot);
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
