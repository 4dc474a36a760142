// SPDX-License-Identifier: BSL-1.0
// Out-of-line definitions for task_manager.hpp and detail/task_core.hpp. In compiled mode, including this file
// once brings in every task manager definition (the detail .ipp files below, and this_task's).
#pragma once

#include <tether/impl/fair_queue.ipp>
#include <tether/impl/fiber_worker.ipp>
#include <tether/impl/task_record.ipp>
#include <tether/impl/task_registry.ipp>
#include <tether/impl/task_types.ipp>
#include <tether/impl/this_task.ipp>
#include <tether/task_manager.hpp>

#include <boost/core/demangle.hpp>

#include <algorithm>
#include <cstdio>
#include <exception>
#include <thread>

namespace tether::inline v1 {

namespace detail {

TETHER_DECL void raise_result_mismatch(const task_record& task, const std::type_info& asked, std::string_view api) {
  scrub_fiber_stack();
  raise(errc::result_type_mismatch, "{}: task '{}' returns {}, not {}", api, task.id,
        boost::core::demangle(task.result_type().name()), boost::core::demangle(asked.name()));
}

TETHER_DECL void refuse_self_wait(const task_record& task, std::string_view api) {
  fiber_worker* worker = fiber_worker::current();
  if (!worker) return;
  task_context* running = worker->current_task();
  if (running && &task_access::record(*running) == &task) {
    scrub_fiber_stack();
    raise(errc::would_deadlock, "{}: task '{}' would wait for its own end", api, task.id);
  }
}

// ---- task_core -----------------------------------------------------------------------------------------------

TETHER_DECL task_core::task_core(const task_core_settings& settings)
    : queue_(settings.limits),
      registry_(settings.retain_for, settings.max_retained),
      idle_(settings.workers, settings.standby_poll) {
  workers_.reserve(settings.workers);
  for (unsigned i = 0; i < settings.workers; ++i)
    workers_.push_back(std::make_unique<fiber_worker>(*this, idle_, i, settings.stack_size));
  for (auto& worker : workers_) worker->start();
}

TETHER_DECL task_core::~task_core() {
  try {
    shutdown(shutdown_mode::cancel);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    std::terminate();  // destroyed from one of its own tasks: it would wait for itself forever
  }
}

TETHER_DECL void task_core::submit(task_record& task, on_duplicate duplicate) {
  scrub_fiber_stack();  // submit may throw, and may be called from a task
  if (task.id.empty())
    raise(errc::invalid_argument, "tether::task_manager::submit: a task needs an id, got '{}'", task.id);
  if (task.weight == 0)
    raise(errc::invalid_argument, "tether::task_manager::submit: task '{}' has weight 0; weights start at 1", task.id);
  // Checked first so that after shutdown() every submit says so, not duplicate_task; push() checks again.
  if (queue_.closed()) fair_queue::refuse_closed(task);
  ref<task_record> previous;
  registry_.insert(task, [&](task_record* live) {
    if (live && duplicate == on_duplicate::reject)
      raise(errc::duplicate_task, "tether::task_manager::submit: task '{}' already exists and is {}", task.id,
            live->current_status());
    queue_.push(task, live);  // takes a still queued `live` out in the same step, so bounds count it once
    previous.reset(live);
  });
  // A replaced task that no worker has started yet (queued, or taken but not started) ends here and never starts.
  if (previous) stop_or_drop(*previous, task_end::replaced);
  wake_one();
}

TETHER_DECL cancel_outcome task_core::stop_or_drop(task_record& task, task_end why) noexcept {
  if (task.claim_drop()) {
    task.request_stop(why);
    end_unstarted(task);
    return cancel_outcome::removed_from_queue;
  }
  // Decided before the request: a stopped task may end at once, and would then read as finished already.
  if (task.has_ended()) return cancel_outcome::already_finished;  // a finished task keeps its record as it was
  task.request_stop(why);
  return cancel_outcome::stop_requested;
}

TETHER_DECL void task_core::wake_one() noexcept {
  // seq_cst, after the push: pairs with a worker giving up the spinner or standby role, and with one announcing
  // its sleep, before each one's last look at the queue. A spinning worker finds the task by itself; so does an
  // awake one, or the standby within standby_poll (see idle_workers).
  if (idle_.spinning.load(std::memory_order_seq_cst) != 0) return;
  const unsigned sleeping = idle_.sleeping.load(std::memory_order_seq_cst);
  if (sleeping == 0) return;
  if (sleeping < idle_.workers && idle_.standby.load(std::memory_order_seq_cst) != 0) return;
  const std::size_t n = workers_.size();
  const std::size_t first = idle_.newest_sleeper.load(std::memory_order_relaxed) % n;
  for (std::size_t i = 0; i < n; ++i) {
    fiber_worker& worker = *workers_[(first + i) % n];
    if (worker.claim_sleeper()) {
      worker.unpark();
      return;
    }
  }
}

TETHER_DECL void task_core::end_unstarted(task_record& task) noexcept {
  // The caller won the task's drop claim, so no worker runs it; the queue's own bookkeeping is done by whoever
  // holds it there (the caller took it out, or the worker that took it lets it go).
  task.drop();
  task.finish(task_status::cancelled, nullptr);
  registry_.retire(task);
  task.done.set();  // last: whoever sees the end also sees the retention bookkeeping done
}

TETHER_DECL cancel_outcome task_core::cancel(task_record& task, task_end why) {
  if (task.has_ended()) return cancel_outcome::already_finished;
  // Out of the queue (O(1)); one that a worker took but has not started yet is still dropped, by the claim.
  queue_.remove(task);
  return stop_or_drop(task, why);
}

TETHER_DECL cancel_outcome task_core::cancel(std::string_view id) {
  const task_registry::found found = registry_.find(id);
  if (found.known == task_known::expired) return cancel_outcome::already_finished;
  if (!found.record) return cancel_outcome::unknown;
  return cancel(*found.record, task_end::cancelled_by_user);
}

TETHER_DECL std::size_t task_core::cancel_matching(const std::function<bool(std::string_view)>& match, task_end why) {
  std::vector<ref<task_record>> queued, running;
  queue_.take_matching(match, queued, running);
  std::size_t n = 0;
  for (const auto* list : {&queued, &running})
    for (const ref<task_record>& task : *list) n += stop_or_drop(*task, why) != cancel_outcome::already_finished;
  return n;
}

TETHER_DECL bool task_core::run_one(fiber_worker& worker) noexcept {
  ref<task_record> task = queue_.pop();
  if (!task) return false;
  bool mine = claim_and_start(*task, {});
  while (task) {
    std::chrono::system_clock::time_point ended;
    if (mine) ended = run(*task, worker);
    // Going on with the next task takes the queue's lock once for both; other ready fibers go first, though.
    ref<task_record> next;
    if (worker.take_another()) next = queue_.finish_and_pop(*task);
    else queue_.finish(*task);
    // The next task starts before this one's bookkeeping below, and the end time of the one is the start time of
    // the other: a system_clock read costs about a tenth of a no-op task here, and this saves one per task in a row.
    const bool next_mine = next && claim_and_start(*next, mine ? ended : std::chrono::system_clock::time_point{});
    if (mine) {
      registry_.retire(*task);
      task->done.set();  // last: whoever sees the end also sees the retention bookkeeping done
    }
    task = std::move(next);
    mine = next_mine;
  }
  return true;
}

TETHER_DECL bool task_core::claim_and_start(task_record& task, std::chrono::system_clock::time_point at) noexcept {
  // More is queued than this worker takes now: pass the work on to an idle worker, as a submit would have, since
  // the submit may have left it to us (we were spinning then).
  if (queue_.queued() != 0) wake_one();
  // A cancel may have claimed the task since the pop; then it has ended it, and only the queue's part is ours.
  if (!task.claim_start()) return false;
  // Never before its submission: it may have been queued after `at` was read, or the clock may have stepped back.
  task.mark_started(std::max(at == std::chrono::system_clock::time_point{} ? std::chrono::system_clock::now() : at,
                             task.submitted));
  return true;
}

TETHER_DECL std::chrono::system_clock::time_point task_core::run(task_record& task, fiber_worker& worker) noexcept {
  task_context context(task);
  worker.set_current_task(&context);
  std::exception_ptr error;
  const task_status ended = run_captured(
      [&] { return invoke_in(task.ctx, [&] { return task.run(context, error); }); }, "tether::task_manager worker");
  scrub_fiber_stack();  // what the task's exceptions left behind
  worker.set_current_task(nullptr);
  return task.finish(ended, std::move(error));
}

TETHER_DECL shutdown_report task_core::shutdown(shutdown_mode mode) {
  if (fiber_worker* worker = fiber_worker::current(); worker && &worker->source() == this) {
    const task_context* running = worker->current_task();
    scrub_fiber_stack();
    raise(errc::would_deadlock, "tether::task_manager::shutdown: called from task '{}' of the same manager",
          running ? running->id() : std::string("(none)"));
  }
  std::lock_guard lock(shutdown_mutex_);
  if (shut_down_) return report_;
  const std::vector<ref<task_record>> live = queue_.close();
  // Every queued task leaves the queue in one step before any running task is asked to stop, so a worker freed by
  // a stopping task can never start a queued one.
  if (mode == shutdown_mode::cancel) cancel_matching([](std::string_view) { return true; }, task_end::shutdown);
  for (const ref<task_record>& task : live) task->done.wait();
  for (const ref<task_record>& task : live) {
    if (task->current_status() != task_status::cancelled) ++report_.completed;
    else if (task->was_started()) ++report_.stopped_while_running;
    else ++report_.cancelled_before_start;
  }
  for (auto& worker : workers_) worker->stop();
  for (auto& worker : workers_) worker->join();
  shut_down_ = true;
  return report_;
}

}  // namespace detail

// ---- task_context --------------------------------------------------------------------------------------------

TETHER_DECL void task_context::publish_mismatch(const std::type_info& published) const {
  detail::scrub_fiber_stack();
  detail::raise(errc::result_type_mismatch,
                "tether::task_context::publish: task '{}' returns {} and cannot publish a {}", record_.id,
                boost::core::demangle(record_.result_type().name()), boost::core::demangle(published.name()));
}

// ---- task_manager --------------------------------------------------------------------------------------------

namespace detail {
inline task_core_settings settings_from(const task_manager::options& opts) {
  task_core_settings s;
  s.workers = opts.workers != 0 ? opts.workers : std::max(1u, std::thread::hardware_concurrency());
  s.limits = {opts.max_queued, opts.max_queued_per_group};
  s.retain_for = opts.retain_for;
  s.max_retained = opts.max_retained;
  s.stack_size = opts.stack_size;
  s.standby_poll = opts.standby_poll;
  return s;
}
}  // namespace detail

TETHER_DECL task_manager::task_manager() : task_manager(options{}) {}

TETHER_DECL task_manager::task_manager(options opts) {
  if (opts.standby_poll < std::chrono::microseconds::zero())
    detail::raise(errc::invalid_argument, "tether::task_manager: standby_poll is {} microseconds; give 0 or more",
                  opts.standby_poll.count());
  if (opts.stack_size < 16 * 1024)
    detail::raise(errc::invalid_argument, "tether::task_manager: stack_size {} is too small; give at least 16384 bytes",
          opts.stack_size);
  core_ = std::make_unique<detail::task_core>(detail::settings_from(opts));
}

TETHER_DECL task_manager::~task_manager() = default;

TETHER_DECL detail::ref<detail::task_record> task_manager::find_or_throw(std::string_view id,
                                                                        std::string_view api) const {
  detail::task_registry::found found = core_->find(id);
  if (!found.record) detail::scrub_fiber_stack();
  if (found.known == task_known::expired) detail::raise(errc::expired_task, "{}: task '{}' has expired", api, id);
  if (!found.record) detail::raise(errc::unknown_task, "{}: no task '{}'", api, id);
  return std::move(found.record);
}

namespace detail {
inline task_info info_of(const task_record& task) {
  task_info out;
  task.fill(out);
  out.group = task.group;
  out.known = task_known::live;
  return out;
}
}  // namespace detail

TETHER_DECL task_info task_manager::info(std::string_view id) const {
  const detail::task_registry::found found = core_->find(id);
  if (!found.record) {
    task_info out;
    out.id = id;
    out.known = found.known;
    return out;
  }
  return detail::info_of(*found.record);
}

TETHER_DECL std::vector<task_info> task_manager::list(std::string_view group) const {
  std::vector<task_info> out;
  const auto wanted = [&](const detail::task_record& t) { return group.empty() || t.group == group; };
  for (const detail::ref<detail::task_record>& task : core_->collect(wanted))
    if (!core_->expired(*task)) out.push_back(detail::info_of(*task));
  return out;
}

TETHER_DECL cancel_outcome task_manager::cancel(std::string_view id) { return core_->cancel(id); }

TETHER_DECL std::size_t task_manager::cancel_group(std::string_view group) {
  return core_->cancel_matching([group](std::string_view name) { return name == group; }, task_end::group_cancelled);
}

TETHER_DECL std::size_t task_manager::cancel_all() {
  return core_->cancel_matching([](std::string_view) { return true; }, task_end::cancelled_by_user);
}

TETHER_DECL shutdown_report task_manager::shutdown(shutdown_mode mode) { return core_->shutdown(mode); }

}  // namespace tether::inline v1
