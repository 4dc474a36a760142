// SPDX-License-Identifier: BSL-1.0
// Out-of-line definitions for detail/task_registry.hpp.
#pragma once

#include <tether/detail/task_registry.hpp>

#include <algorithm>

namespace tether::inline v1::detail {

TETHER_DECL task_registry::task_registry(std::chrono::seconds retain_for, std::size_t max_retained)
    : retain_for_(retain_for), max_retained_(max_retained), max_tombstones_(std::max<std::size_t>(max_retained, 1024)) {}

TETHER_DECL task_registry::found task_registry::find(std::string_view id) const {
  shard& s = shard_of(id);
  std::lock_guard lock(s.mutex);
  if (auto it = s.live.find(id); it != s.live.end()) {
    if (it->second->has_ended() && expired(*it->second, std::chrono::steady_clock::now()))
      return {nullptr, task_known::expired};
    return {it->second, task_known::live};
  }
  if (s.tombstones.empty()) return {};
  if (auto it = s.tombstones.find(std::string(id)); it != s.tombstones.end())
    if (std::chrono::steady_clock::now() - it->second < retain_for_) return {nullptr, task_known::expired};
  return {};
}

TETHER_DECL bool task_registry::expired(const task_record& task, time_point now) const noexcept {
  // relaxed: read after an acquire load of `status` saw the final status, which was stored after this field.
  const auto ended = time_point(std::chrono::nanoseconds(task.finished_steady_ns.load(std::memory_order_relaxed)));
  return now - ended >= retain_for_;
}

TETHER_DECL void task_registry::retire(task_record& task) {
  std::lock_guard lock(retention_mutex_);
  retained_.emplace_back(&task);
  const time_point now = std::chrono::steady_clock::now();
  while (!retained_.empty() && (retained_.size() > max_retained_ || expired(*retained_.front(), now))) {
    evict(*retained_.front(), now);
    retained_.pop_front();
  }
  forget_tombstones(now);
}

TETHER_DECL void task_registry::evict(task_record& task, time_point now) {
  shard& s = shard_of(task.id);
  std::lock_guard lock(s.mutex);
  auto it = s.live.find(std::string_view(task.id));
  if (it == s.live.end() || it->second.get() != &task) return;  // a newer submission owns the id now
  s.live.erase(it);
  s.tombstones.insert_or_assign(task.id, now);
  tombstone_order_.push_back({task.id, now});
}

TETHER_DECL void task_registry::forget_tombstones(time_point now) {
  while (!tombstone_order_.empty()) {
    const tombstone& oldest = tombstone_order_.front();
    if (tombstone_order_.size() <= max_tombstones_ && now - oldest.at < retain_for_) return;
    shard& s = shard_of(oldest.id);
    {
      std::lock_guard lock(s.mutex);
      auto it = s.tombstones.find(oldest.id);
      if (it != s.tombstones.end() && it->second == oldest.at) s.tombstones.erase(it);
    }
    tombstone_order_.pop_front();
  }
}

TETHER_DECL std::vector<ref<task_record>> task_registry::collect(
    const std::function<bool(const task_record&)>& keep) const {
  std::vector<ref<task_record>> out;
  for (shard& s : shards_) {
    std::lock_guard lock(s.mutex);
    for (const auto& [id, record] : s.live)
      if (keep(*record)) out.push_back(record);
  }
  return out;
}

TETHER_DECL std::size_t task_registry::size() const {
  std::size_t n = 0;
  for (shard& s : shards_) {
    std::lock_guard lock(s.mutex);
    n += s.live.size();
  }
  return n;
}

}  // namespace tether::inline v1::detail
