// SPDX-License-Identifier: BSL-1.0
// The affine executor's hand-off: an intrusive lock-free list that producers push onto, with the owner's flags.
#pragma once

#include <tether/detail/affine_jobs.hpp>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <mutex>

namespace tether::inline v1::detail {

/// Where producers leave jobs for the one owner thread. A producer pushes with one compare-and-swap on `head_`;
/// a consumer takes the whole list with one more and reverses it into `ready_`, which gives push order (FIFO per
/// producer, and across producers the order of their pushes). The jobs are the nodes, so nothing is allocated.
///
/// `head_` also carries two flags, so that each of them changes together with the list in one atomic step:
/// `closed` (push is refused from then on) and `sleeping` (the owner needs a signal: the push that clears it must
/// wake the owner). A general MPMC queue costs more here: with moodycamel's, which tether used first, a call's round
/// trip took about 290 ns, against about 200 ns with this list and 140 ns for a spin-polled slot (medians of the
/// peers in bench/affine_executor_bench; docs/benchmarks.md).
/// **Thread safety:** push from any thread; everything else from the owner, or from any thread that stops the
/// executor (consumers serialise on `ready_mutex_`, which only the owner takes outside of stop()).
class affine_inbox {
public:
  affine_inbox() = default;
  affine_inbox(const affine_inbox&) = delete;
  affine_inbox& operator=(const affine_inbox&) = delete;

  enum class pushed { ok, ok_wake_owner, closed };

  /// Adds `job`; `closed` (and nothing changed) once close() was called; `ok_wake_owner` when the owner waited for
  /// a signal and this push is the one that must give it.
  pushed push(affine_job* job) noexcept {
    std::uintptr_t old = head_.load(std::memory_order_relaxed);
    do {
      if (old & closed_bit) return pushed::closed;
      job->next = pointer(old);
      // release: the job's contents travel with it; seq_cst: pairs with try_sleep() and close().
    } while (!head_.compare_exchange_weak(old, reinterpret_cast<std::uintptr_t>(job), std::memory_order_seq_cst,
                                          std::memory_order_relaxed));
    return (old & sleeping_bit) ? pushed::ok_wake_owner : pushed::ok;
  }

  /// The oldest job, or nullptr. With `refill`, takes what producers pushed since the last look when nothing taken
  /// earlier is left; without, only what an earlier refill() or take() brought in.
  affine_job* take(bool refill = true) noexcept {
    std::lock_guard lock(ready_mutex_);
    if (!ready_ && refill) grab();
    affine_job* job = ready_;
    if (job) ready_ = job->next;
    return job;
  }

  /// Brings in what producers pushed so far (behind what was brought in earlier); returns how many jobs take(false)
  /// can now return.
  std::size_t refill() noexcept {
    std::lock_guard lock(ready_mutex_);
    grab();
    std::size_t n = 0;
    for (affine_job* j = ready_; j; j = j->next) ++n;
    return n;
  }

  /// True when a push or a close() happened that the owner has not taken yet (a hint: relaxed, for spinning).
  bool pending() const noexcept { return (head_.load(std::memory_order_relaxed) & ~sleeping_bit) != 0; }

  /// Refuses every later push. True for the call that closed it.
  bool close() noexcept { return !(head_.fetch_or(closed_bit, std::memory_order_seq_cst) & closed_bit); }

  /// Closed, and every job pushed before the close has been taken.
  bool closed_and_empty() noexcept {
    const std::uintptr_t word = head_.load(std::memory_order_acquire);
    if (!(word & closed_bit) || pointer(word)) return false;
    std::lock_guard lock(ready_mutex_);
    return ready_ == nullptr;
  }

  /// The owner is going to wait for a signal: sets `sleeping` unless a job or a close is there (then false, and
  /// the flag stays clear). seq_cst: exactly one of this and a concurrent push sees the other.
  bool try_sleep() noexcept {
    if (head_.fetch_or(sleeping_bit, std::memory_order_seq_cst) & ~sleeping_bit) {
      head_.fetch_and(~sleeping_bit, std::memory_order_relaxed);  // relaxed: producers only skip a needless wake
      return false;
    }
    return true;
  }

  /// The owner leaves its loop: sets `sleeping` whatever is pending. True when jobs were pending, or the inbox is
  /// closed (a drain() or stop() the loop has yet to finish), and no push has cleared the flag since: the caller
  /// must then give the signal itself, since the one given for it may have been consumed already.
  bool sleep_or_signal() noexcept {
    if ((head_.fetch_or(sleeping_bit, std::memory_order_seq_cst) & ~sleeping_bit) == 0 && !has_ready()) return false;
    return head_.fetch_and(~sleeping_bit, std::memory_order_seq_cst) & sleeping_bit;
  }

  /// The owner is awake again: producers need not signal it.
  void wake_up() noexcept { head_.fetch_and(~sleeping_bit, std::memory_order_relaxed); }  // relaxed: as above

  /// Pending jobs or closed (seq_cst: for wakeup_fd()'s creation, which stands in for pushes that saw no fd).
  bool anything_pending() const noexcept {
    return (head_.load(std::memory_order_seq_cst) & ~sleeping_bit) != 0 || has_ready();
  }

  /// fork(): main_thread()'s inbox is locked across it, so that the child, whose thread owns main_thread() then,
  /// never finds the lock taken by the parent's main thread, which is not there.
  void lock_for_fork() noexcept { ready_mutex_.lock(); }
  void unlock_after_fork() noexcept { ready_mutex_.unlock(); }

private:
  static constexpr std::uintptr_t sleeping_bit = 1, closed_bit = 2, flag_bits = 3;
  static_assert(alignof(affine_job) > flag_bits, "a job's address must leave the two low bits for the flags");

  static affine_job* pointer(std::uintptr_t word) noexcept { return reinterpret_cast<affine_job*>(word & ~flag_bits); }

  bool has_ready() const noexcept {
    std::lock_guard lock(ready_mutex_);
    return ready_ != nullptr;
  }

  /// Moves the pushed jobs, oldest first, behind ready_. Called under ready_mutex_.
  void grab() noexcept {
    std::uintptr_t old = head_.load(std::memory_order_relaxed);
    // acquire: pairs with the pushes, so the jobs' contents are visible. The flags stay as they are.
    while (pointer(old) && !head_.compare_exchange_weak(old, old & flag_bits, std::memory_order_acquire,
                                                        std::memory_order_relaxed)) {
    }
    affine_job* fresh = nullptr;  // reversed: newest last
    for (affine_job* j = pointer(old); j;) {
      affine_job* next = j->next;
      j->next = fresh;
      fresh = j;
      j = next;
    }
    if (!fresh) return;
    affine_job** tail = &ready_;
    while (*tail) tail = &(*tail)->next;
    *tail = fresh;
  }

  alignas(64) std::atomic<std::uintptr_t> head_{sleeping_bit};  // the owner needs a signal until it runs a loop
  alignas(64) mutable std::mutex ready_mutex_;
  affine_job* ready_ = nullptr;  // taken from head_, not yet handed out; guarded by ready_mutex_
};

}  // namespace tether::inline v1::detail
