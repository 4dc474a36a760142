// SPDX-License-Identifier: BSL-1.0
// Out-of-line definitions for detail/task_record.hpp.
#pragma once

#include <tether/detail/task_record.hpp>

#include <cmath>

namespace tether::inline v1::detail {

TETHER_DECL std::string describe_exception(const std::exception_ptr& error) noexcept {
  scrub_fiber_stack();
  try {
    try {
      std::rethrow_exception(error);
    } catch (const std::exception& e) {
      return e.what();
    } catch (...) {
      return "an exception not derived from std::exception";
    }
  } catch (...) {
    return {};  // out of memory while copying the text
  }
}

TETHER_DECL task_record::task_record(std::string task_id, std::uint64_t id_hash, std::string task_group,
                                     unsigned task_weight, tether::context task_ctx)
    : id(std::move(task_id)),
      hash(id_hash),
      group(std::move(task_group)),
      weight(task_weight),
      ctx(std::move(task_ctx)),
      submitted(std::chrono::system_clock::now()) {}

TETHER_DECL bool task_record::request_stop(task_end why) noexcept {
  task_end expected = task_end::none;
  if (!request.compare_exchange_strong(expected, why, std::memory_order_acq_rel)) return false;
  std::optional<std::stop_source> source;
  {
    std::lock_guard lock(mutex_);
    if (extras_) source = extras_->stop;
  }
  // Outside the lock: request_stop() runs the task's stop callbacks, which may report progress.
  if (source) source->request_stop();
  cancelled.set();
  return true;
}

TETHER_DECL std::stop_token task_record::stop_token() const noexcept {
  std::stop_source source;
  {
    std::lock_guard lock(mutex_);
    std::optional<std::stop_source>& stop = more().stop;
    if (!stop) stop.emplace();
    source = *stop;
  }
  // A request that came before the state existed found nothing to stop: stand in for it. (Its lock section came
  // first, so the request is visible here.)
  if (cancel_requested()) source.request_stop();
  return source.get_token();
}

TETHER_DECL void task_record::mark_started(std::chrono::system_clock::time_point at) noexcept {
  // No lock: the start time is the only field besides the status, and readers take it after the status.
  // relaxed: its partner is the release store of `status` just below.
  started_ns_.store(at.time_since_epoch().count(), std::memory_order_relaxed);
  status.store(task_status::running, std::memory_order_release);
}

TETHER_DECL std::chrono::system_clock::time_point task_record::finish(task_status final_status,
                                                                      std::exception_ptr error) noexcept {
  const auto coarse_now = coarse_clock::now().time_since_epoch();
  // Never before the start (or the submission of a task that never started, whose start reads as zero), should the
  // clock step back. The start was written on this thread, or never.
  const auto now = std::max({std::chrono::system_clock::now(), submitted, started_at()});
  std::string text;
  std::unique_ptr<extras> made;  // made before the lock, for the error's text; without memory, the text is lost
  if (error) {
    text = describe_exception(error);
    made.reset(new (std::nothrow) extras);
  }
  std::lock_guard lock(mutex_);
  error_ = std::move(error);
  if (!extras_) extras_ = std::move(made);
  if (extras_) extras_->error_message = std::move(text);
  const task_end asked = request.load(std::memory_order_acquire);
  if (asked != task_end::none) reason_ = asked;
  else reason_ = final_status == task_status::failed ? task_end::failed : task_end::completed;
  ++sequence_;
  finished_ = now;
  // relaxed: its partner is the release store of `status` below.
  finished_coarse_ns.store(coarse_now.count(), std::memory_order_relaxed);
  status.store(final_status, std::memory_order_release);
  return now;
}

TETHER_DECL void task_record::set_progress(double fraction, std::string_view message) {
  if (!(fraction >= 0.0 && fraction <= 1.0)) {
    scrub_fiber_stack();
    raise(errc::invalid_argument, "tether::task_context::progress: task '{}' reported {}, not a fraction in [0, 1]",
          id, fraction);
  }
  std::lock_guard lock(mutex_);
  extras& e = more();
  e.progress = fraction;
  e.message.assign(message);
  ++sequence_;
}

TETHER_DECL void task_record::fill(task_fields& out) const {
  std::lock_guard lock(mutex_);
  fill_locked(out);
}

TETHER_DECL void task_record::fill_locked(task_fields& out) const {
  out.id = id;
  out.status = status.load(std::memory_order_acquire);
  out.cancel_requested = cancel_requested();
  out.progress = extras_ ? extras_->progress : 0.0;
  out.message = extras_ ? extras_->message : std::string();
  out.sequence = sequence_;
  out.error = error_;
  out.error_message = extras_ ? extras_->error_message : std::string();
  out.reason = reason_;
  out.submitted = submitted;
  // After the status: a task that reads as started has its start time (`status` was read with acquire).
  if (out.status != task_status::queued) out.started = started_at();
  out.finished = finished_;
}

}  // namespace tether::inline v1::detail
