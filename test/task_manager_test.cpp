// SPDX-License-Identifier: BSL-1.0
// tether::task_manager: ids, statuses, results, cancellation, replacement, fairness, bounds, fibers and shutdown.
#include <tether/task_manager.hpp>

#include <boost/fiber/fiber.hpp>
#include <boost/fiber/operations.hpp>
#include <doctest/doctest.h>
#include "error_of.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <future>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include <sys/wait.h>
#include <unistd.h>

namespace {

using namespace std::chrono_literals;
using tether::task_context;
using tether::task_end;
using tether::task_manager;
using tether::task_status;

#if defined(__SANITIZE_ADDRESS__)
/// AddressSanitizer reports a false stack-buffer-underflow inside its own __asan_handle_no_return when a
/// tether::error is thrown and caught inside a fiber (Debian's Boost.Context does not tell ASan about fiber
/// stacks); tests that do so are skipped in ASan builds. See docs/task_manager.md, "Sanitizers".
constexpr bool asan_build = true;
#else
constexpr bool asan_build = false;
#endif

/// Scales a stress size down under the sanitizers.
constexpr int scaled(int n, int divisor = 5) { return TETHER_SANITIZED ? (n / divisor > 0 ? n / divisor : 1) : n; }

task_manager::options with_workers(unsigned n) {
  task_manager::options o;
  o.workers = n;
  return o;
}

using tether_test::error_of;

/// Holds a worker thread (not just its fiber) until opened: tasks queued behind it stay queued. The state is
/// shared with the task, which may still be returning from its wait when the test ends.
class thread_gate {
public:
  /// A task body that reports it started, then blocks its worker thread until open().
  auto blocker() {
    return [state = state_] {
      state->started.set_value();
      state->opened.wait();
    };
  }
  void wait_started() { state_->started_future.wait(); }
  void open() { state_->open.set_value(); }

private:
  struct shared {
    std::promise<void> started, open;
    std::future<void> started_future = started.get_future();
    std::shared_future<void> opened = open.get_future().share();
  };
  std::shared_ptr<shared> state_ = std::make_shared<shared>();
};

}  // namespace

TEST_CASE("a submitted task runs and its handle returns the value") {
  task_manager tasks(with_workers(2));
  auto plain = tasks.submit("plain", [] { return 6 * 7; });
  auto with_context = tasks.submit("ctx", [](task_context& t) { return t.id(); });
  auto nothing = tasks.submit("void", [] {});
  CHECK(plain.get() == 42);
  CHECK(with_context.get() == "ctx");
  nothing.get();
  CHECK(plain.id() == "plain");
  const auto result = tasks.get_result<int>("plain");
  REQUIRE(result);
  CHECK(result->status == task_status::succeeded);
  CHECK(result->reason == task_end::completed);
  CHECK(result->value == 42);
  CHECK(result->started >= result->submitted);
  CHECK(result->finished >= result->started);
  // Never reported, never failed: the defaults (the record makes room for these only when a task uses them).
  CHECK(result->progress == 0.0);
  CHECK(result->message.empty());
  CHECK(result->error_message.empty());
  CHECK(!result->error);
  CHECK(tasks.get_result<void>("void")->status == task_status::succeeded);
}

TEST_CASE("an exception thrown by a task is kept in its result and rethrown by get") {
  task_manager tasks(with_workers(1));
  auto h = tasks.submit("boom", []() -> int { throw std::runtime_error("disk on fire"); });
  CHECK_THROWS_WITH_AS(h.get(), "disk on fire", std::runtime_error);
  const auto result = tasks.get_result<int>("boom");
  REQUIRE(result);
  CHECK(result->status == task_status::failed);
  CHECK(result->reason == task_end::failed);
  CHECK(result->error != nullptr);
  CHECK(result->error_message == "disk on fire");
  CHECK_FALSE(result->value.has_value());
}

TEST_CASE("a task that throws task_cancelled on its own ends cancelled") {
  task_manager tasks(with_workers(1));
  auto h = tasks.submit("quits", []() -> int { throw tether::task_cancelled(); });
  CHECK_THROWS_AS(h.get(), tether::task_cancelled);
  CHECK(tasks.info("quits").status == task_status::cancelled);
}

TEST_CASE("publish and progress show up in get_result and bump the sequence") {
  task_manager tasks(with_workers(1));
  std::promise<void> go;
  std::shared_future<void> go_future = go.get_future().share();
  std::promise<void> published;
  auto h = tasks.submit("report", [&](task_context& t) {
    t.publish(std::string("page 1"));
    t.progress(0.5, "half way");
    published.set_value();
    go_future.wait();
    t.publish("page 2");  // a string literal for a std::string task
    return std::string("done");
  });
  published.get_future().wait();
  auto mid = tasks.get_result<std::string>("report");
  REQUIRE(mid);
  CHECK(mid->status == task_status::running);
  CHECK(mid->value == "page 1");
  CHECK(mid->progress == 0.5);
  CHECK(mid->message == "half way");
  CHECK(mid->sequence == 2);
  CHECK(tasks.get_result<std::string>("report")->sequence == mid->sequence);  // nothing new
  go.set_value();
  CHECK(h.get() == "done");
  auto end = tasks.get_result<std::string>("report");
  CHECK(end->value == "done");
  CHECK(end->sequence > mid->sequence);
}

TEST_CASE("a new submission under an id counts its sequence anew and has its own submitted time") {
  // What a poller must compare, besides the sequence, to see that an id now names another submission.
  task_manager tasks(with_workers(1));
  const auto twice = [](task_context& t) {
    t.publish(1);
    t.publish(2);
    return 3;
  };
  tasks.submit("x", twice).get();
  const auto first = tasks.get_result<int>("x");
  tasks.submit("x", twice).get();
  const auto second = tasks.get_result<int>("x");
  REQUIRE(first);
  REQUIRE(second);
  CHECK(second->sequence == first->sequence);
  CHECK(second->submitted != first->submitted);
}

TEST_CASE("publish converts numbers and rejects other types with result_type_mismatch" * doctest::skip(asan_build)) {
  task_manager tasks(with_workers(1));
  auto h = tasks.submit("n", [](task_context& t) {
    t.publish(3);  // int for a double task
    CHECK(error_of([&] { t.publish(std::string("text")); }) == tether::errc::result_type_mismatch);
    CHECK(error_of([&] { t.progress(1.5); }) == tether::errc::invalid_argument);
    return 4.5;
  });
  CHECK(h.get() == 4.5);
  CHECK(error_of([&] { (void)tasks.get_result<int>("n"); }) == tether::errc::result_type_mismatch);
  CHECK_FALSE(tasks.get_result<double>("never-submitted"));
}

TEST_CASE("cancelling a queued task is immediate and it never starts") {
  task_manager tasks(with_workers(1));
  thread_gate gate;
  tasks.submit("hold", gate.blocker());
  gate.wait_started();
  std::atomic<bool> ran{false};
  auto queued = tasks.submit("queued", [&] { ran = true; });
  CHECK(queued.status() == task_status::queued);
  CHECK(tasks.cancel("queued") == tether::cancel_outcome::removed_from_queue);
  CHECK(queued.status() == task_status::cancelled);  // at once, while the worker is still held
  const auto info = tasks.info("queued");
  CHECK(info.reason == task_end::cancelled_by_user);
  CHECK(info.cancel_requested);
  CHECK(info.started == std::chrono::system_clock::time_point{});
  CHECK_THROWS_AS(queued.get(), tether::task_cancelled);
  CHECK(queued.cancel() == tether::cancel_outcome::already_finished);
  CHECK(tasks.cancel("no-such-task") == tether::cancel_outcome::unknown);
  gate.open();
  tasks.shutdown();
  CHECK_FALSE(ran);
}

// The reference left a cancelled queued task in CANCELLING forever, so waiting for it and reusing its id hung.
TEST_CASE("regression: a cancelled queued task can be waited for and its id reused") {
  task_manager tasks(with_workers(1));
  thread_gate gate;
  tasks.submit("hold", gate.blocker());
  gate.wait_started();
  tasks.submit("job", [] { return 1; });
  CHECK(tasks.cancel("job") == tether::cancel_outcome::removed_from_queue);
  CHECK(tasks.wait("job", 1h) == task_status::cancelled);
  auto again = tasks.submit("job", [] { return 2; }, {.duplicate = tether::on_duplicate::reject});
  gate.open();
  CHECK(again.get() == 2);
  CHECK(tasks.get_result<int>("job")->value == 2);
}

TEST_CASE("cancelling a running task asks it to stop through stop_token and publish") {
  for (unsigned workers : {1u, 2u, 4u}) {
    CAPTURE(workers);
    task_manager tasks(with_workers(workers));
    std::promise<void> running;
    auto h = tasks.submit("loop", [&](task_context& t) {
      running.set_value();
      while (!t.stop_token().stop_requested()) tether::this_task::yield();
      CHECK(t.stop_requested());
      t.publish(1);  // throws task_cancelled
      return 0;
    });
    running.get_future().wait();
    CHECK(h.cancel() == tether::cancel_outcome::stop_requested);
    CHECK_THROWS_AS(h.get(), tether::task_cancelled);
    const auto info = tasks.info("loop");
    CHECK(info.status == task_status::cancelled);
    CHECK(info.reason == task_end::cancelled_by_user);
    CHECK(tasks.cancel("loop") == tether::cancel_outcome::already_finished);
  }
}

TEST_CASE("stop_token: a callback registered before the cancel runs on it, and a token taken after is stopped") {
  task_manager tasks(with_workers(1));
  std::promise<void> registered, cancelled;
  std::atomic<int> callbacks{0};
  auto early = tasks.submit("early", [&](task_context& t) {
    std::stop_callback on_stop(t.stop_token(), [&] {
      t.progress(0.5, "stopping");  // the callback may report: it runs outside the record's lock
      ++callbacks;
    });
    registered.set_value();
    cancelled.get_future().wait();  // blocks the worker: only the callback can tell us
    return callbacks.load();
  });
  registered.get_future().wait();
  CHECK(early.cancel() == tether::cancel_outcome::stop_requested);
  CHECK(callbacks == 1);  // ran inside cancel(), on this thread
  CHECK(tasks.info("early").message == "stopping");
  cancelled.set_value();
  CHECK(early.get() == 1);

  std::promise<void> asked, go;
  auto late = tasks.submit("late", [&](task_context& t) {
    asked.set_value();
    go.get_future().wait();
    return t.stop_token().stop_requested();  // the stop state is made only now, after the cancel
  });
  asked.get_future().wait();
  CHECK(late.cancel() == tether::cancel_outcome::stop_requested);
  go.set_value();
  CHECK(late.get());
}

TEST_CASE("a task that ignores a cancel request ends as it ends, with the request as reason") {
  task_manager tasks(with_workers(1));
  std::promise<void> running, asked;
  auto h = tasks.submit("stubborn", [&] {
    running.set_value();
    asked.get_future().wait();
    return 5;
  });
  running.get_future().wait();
  CHECK(tasks.cancel("stubborn") == tether::cancel_outcome::stop_requested);
  CHECK(tasks.info("stubborn").status == task_status::running);
  CHECK(tasks.info("stubborn").cancel_requested);
  asked.set_value();
  CHECK(h.get() == 5);
  CHECK(tasks.info("stubborn").status == task_status::succeeded);
  CHECK(tasks.info("stubborn").reason == task_end::cancelled_by_user);
}

// The reference's submit() blocked until the replaced task ended, and the old task's cleanup raced with the new one.
TEST_CASE("regression: replacing a running task does not wait for it and its late writes never reach the successor") {
  task_manager tasks(with_workers(2));
  std::promise<void> old_running, release_old;
  std::shared_future<void> release = release_old.get_future().share();
  auto old = tasks.submit("render", [&](task_context& t) {
    t.publish(1);
    old_running.set_value();
    release.wait();                         // still running long after it was replaced
    t.progress(0.99, "old task, late");     // progress does not throw: it must land in the old record only
    try {
      t.publish(666);
    } catch (const tether::task_cancelled&) {
    }
    return 666;
  });
  old_running.get_future().wait();
  std::promise<void> new_published;
  std::promise<void> release_new;
  std::shared_future<void> new_release = release_new.get_future().share();
  auto successor = tasks.submit("render", [&](task_context& t) {  // returns although the old one is blocked
    t.publish(2);
    new_published.set_value();
    new_release.wait();
    return 3;
  });
  CHECK(old.status() == task_status::running);
  CHECK(tasks.info("render").cancel_requested == false);  // the id now names the successor
  new_published.get_future().wait();
  release_old.set_value();
  CHECK(old.get() == 666);  // it ignored the request; its own record says so
  const auto mid = tasks.get_result<int>("render");
  CHECK(mid->value == 2);
  CHECK(mid->progress == 0.0);
  CHECK(mid->message.empty());
  release_new.set_value();
  CHECK(successor.get() == 3);
  CHECK(tasks.get_result<int>("render")->value == 3);
}

TEST_CASE("a replaced queued task ends cancelled with reason replaced and never starts") {
  task_manager tasks(with_workers(1));
  thread_gate gate;
  tasks.submit("hold", gate.blocker());
  gate.wait_started();
  std::atomic<int> ran{0};
  auto first = tasks.submit("x", [&] { ran += 1; });
  auto second = tasks.submit("x", [&] { ran += 10; });
  CHECK(first.status() == task_status::cancelled);
  gate.open();
  second.get();
  CHECK_THROWS_AS(first.get(), tether::task_cancelled);
  CHECK(ran == 10);
}

TEST_CASE("on_duplicate::reject refuses a live id and accepts it once the task ended") {
  task_manager tasks(with_workers(1));
  thread_gate gate;
  auto h = tasks.submit("only", gate.blocker());
  gate.wait_started();
  const auto reject = tether::task_options{.duplicate = tether::on_duplicate::reject};
  CHECK(error_of([&] { tasks.submit("only", [] {}, reject); }) == tether::errc::duplicate_task);
  gate.open();
  h.get();
  tasks.submit("only", [] {}, reject).get();
}

TEST_CASE("submit rejects an empty id and a zero weight") {
  task_manager tasks(with_workers(1));
  CHECK(error_of([&] { tasks.submit("", [] {}); }) == tether::errc::invalid_argument);
  CHECK(error_of([&] { tasks.submit("w", [] {}, {.weight = 0}); }) == tether::errc::invalid_argument);
}

TEST_CASE("the manager refuses a stack under 16 KiB and a negative standby_poll") {
  task_manager::options small = with_workers(1), negative = with_workers(1);
  small.stack_size = 8 * 1024;
  negative.standby_poll = std::chrono::microseconds(-1);
  CHECK(error_of([&] { task_manager tasks(small); }) == tether::errc::invalid_argument);
  CHECK(error_of([&] { task_manager tasks(negative); }) == tether::errc::invalid_argument);
}

TEST_CASE("statuses only move forward, as a poller sees them") {
  task_manager tasks(with_workers(2));
  auto h = tasks.submit("steps", [](task_context& t) {
    for (int i = 0; i < 2000; ++i) {
      t.publish(i);
      if (i % 64 == 0) tether::this_task::yield();
    }
    return -1;
  });
  task_status last = task_status::queued;
  std::uint64_t last_sequence = 0;
  for (;;) {
    const auto r = tasks.get_result<int>("steps");
    REQUIRE(r);
    CHECK(r->status >= last);
    CHECK(r->sequence >= last_sequence);
    last = r->status;
    last_sequence = r->sequence;
    if (tether::is_final(last)) break;
  }
  CHECK(h.get() == -1);
  CHECK(last == task_status::succeeded);
}

TEST_CASE("info tells unknown ids from expired ones, and wait throws accordingly") {
  task_manager::options o = with_workers(1);
  o.max_retained = 1;
  task_manager tasks(o);
  tasks.submit("first", [] {}).get();
  CHECK(tasks.info("first").known == tether::task_known::live);
  tasks.submit("second", [] {}).get();  // evicts "first"
  CHECK(tasks.info("first").known == tether::task_known::expired);
  CHECK(tasks.info("second").known == tether::task_known::live);
  CHECK(tasks.info("never").known == tether::task_known::unknown);
  CHECK_FALSE(tasks.get_result<void>("first"));
  CHECK(error_of([&] { tasks.wait("first", 1s); }) == tether::errc::expired_task);
  CHECK(error_of([&] { tasks.wait("never", 1s); }) == tether::errc::unknown_task);
  CHECK(tasks.wait("second", 1s) == task_status::succeeded);
  CHECK(tasks.cancel("first") == tether::cancel_outcome::already_finished);
}

TEST_CASE("stress: times stay in order when a worker goes straight from one task to the next" *
          doctest::timeout(120)) {
  // A worker that goes on to the next task uses the end time of one as the start time of the other, but never one
  // before the next task's submission. One producer and one worker keep the queue short, so that a task is often
  // submitted just after the previous one's end time was read (without that clamp, hundreds of tasks per run read
  // as started before they were submitted).
  task_manager tasks(with_workers(1));
  const int n = scaled(40'000);
  for (int i = 0; i < n; ++i) tasks.submit("t" + std::to_string(i), [] {});
  std::vector<tether::task_info> infos;
  int not_succeeded = 0;
  for (int i = 0; i < n; ++i) {
    const std::string id = "t" + std::to_string(i);
    not_succeeded += tasks.wait(id, std::chrono::minutes(5)) != task_status::succeeded;
    infos.push_back(tasks.info(id));
  }
  CHECK(not_succeeded == 0);
  std::sort(infos.begin(), infos.end(), [](const auto& a, const auto& b) {
    return std::tie(a.started, a.finished) < std::tie(b.started, b.finished);
  });
  int out_of_order = 0;
  for (std::size_t i = 0; i < infos.size(); ++i) {
    out_of_order += infos[i].started < infos[i].submitted || infos[i].finished < infos[i].started;
    // One worker runs these one at a time: none of them waits, so no other fiber runs in between.
    if (i > 0) out_of_order += infos[i].started < infos[i - 1].finished;
  }
  CHECK(out_of_order == 0);
}

TEST_CASE("a finished result past retain_for reads as expired") {
  task_manager::options o = with_workers(1);
  o.retain_for = std::chrono::seconds(0);
  task_manager tasks(o);
  tasks.submit("brief", [] {}).get();
  CHECK(tasks.info("brief").known != tether::task_known::live);
  CHECK_FALSE(tasks.get_result<void>("brief"));
}

TEST_CASE("retention keeps memory bounded over many tasks") {
  task_manager::options o = with_workers(2);
  o.max_retained = 100;
  task_manager tasks(o);
  const int n = scaled(20'000);
  for (int i = 0; i < n; ++i) tasks.submit("t" + std::to_string(i), [] {});
  tasks.shutdown();
  CHECK(tasks.list().size() <= 100);
  CHECK(tasks.info("t" + std::to_string(n - 1)).known == tether::task_known::live);
  CHECK(tasks.info("t" + std::to_string(n - 500)).known == tether::task_known::expired);
}

TEST_CASE("tombstones: evicted ids read expired for a while, then unknown; a reused id is live again") {
  // max_retained 10 keeps max(10, 1024) tombstones: of 3,000 tasks, the newest 10 are live, the 1,024 evicted
  // before them expired, and the rest forgotten. Many ids come and go around each one in the id table, which
  // moves entries back into the gaps that erasing leaves; every id must still be found afterwards.
  task_manager::options o = with_workers(1);
  o.max_retained = 10;
  task_manager tasks(o);
  const int n = 3'000, kept = 10, graves = 1'024;
  for (int i = 0; i < n; ++i) tasks.submit("t" + std::to_string(i), [] {}).get();
  int live = 0, expired = 0, unknown = 0;
  for (int i = 0; i < n; ++i) {
    const auto known = tasks.info("t" + std::to_string(i)).known;
    const auto expected = i >= n - kept            ? tether::task_known::live
                          : i >= n - kept - graves ? tether::task_known::expired
                                                   : tether::task_known::unknown;
    if (known != expected) FAIL_CHECK("t" << i << " reads " << tether::to_string(known));
    live += known == tether::task_known::live;
    expired += known == tether::task_known::expired;
    unknown += known == tether::task_known::unknown;
  }
  CHECK(live == kept);
  CHECK(expired == graves);
  CHECK(unknown == n - kept - graves);

  // An expired id submitted again is live; its old tombstone, forgotten later, must not take the new record.
  const std::string again = "t" + std::to_string(n - kept - 1);
  REQUIRE(tasks.info(again).known == tether::task_known::expired);
  CHECK(tasks.submit(again, [] { return 7; }).get() == 7);
  for (int i = 0; i < graves; ++i) tasks.submit("u" + std::to_string(i), [] {}).get();  // forgets the old grave
  CHECK(tasks.info(again).known == tether::task_known::expired);  // evicted itself by now, so a new grave
  CHECK(tasks.info("u" + std::to_string(graves - 1)).known == tether::task_known::live);
}

TEST_CASE("past 4,096 retained results, eviction takes eight at a time and never passes max_retained") {
  task_manager::options o = with_workers(1);
  o.max_retained = 5'000;
  task_manager tasks(o);
  const int n = 5'100, step = 8;
  for (int i = 0; i < n; ++i) tasks.submit("t" + std::to_string(i), [] {}).get();
  const std::size_t kept = tasks.list().size();
  CHECK(kept <= o.max_retained);
  CHECK(kept > o.max_retained - step);
  int live = 0;
  for (int i = n - static_cast<int>(kept); i < n; ++i)
    live += tasks.info("t" + std::to_string(i)).known == tether::task_known::live;
  CHECK(live == static_cast<int>(kept));  // the newest ones
  CHECK(tasks.info("t" + std::to_string(n - static_cast<int>(kept) - 1)).known == tether::task_known::expired);
  CHECK(tasks.info("t0").known == tether::task_known::expired);
}

TEST_CASE("a task whose function or result is over-aligned gets memory aligned for it") {
  struct alignas(128) wide {
    double d[16]{};
  };
  struct alignas(64) line {
    long v = 7;
  };
  task_manager tasks(with_workers(1));
  for (int i = 0; i < 32; ++i) {
    auto at = tasks.submit("w" + std::to_string(i), [w = wide{}] { return reinterpret_cast<std::uintptr_t>(&w); });
    CHECK(at.get() % alignof(wide) == 0);
    auto value = tasks.submit("l" + std::to_string(i), [] { return line{}; });
    CHECK(value.get().v == 7);
  }
}

TEST_CASE("an id resubmitted again and again does not push other evicted ids out of the expired window") {
  // Each resubmission replaces a finished record that is no longer filed under the id; evicting it later must not
  // take one of the newest 1,024 places (max_retained 10 keeps 1,024), or "y" would read unknown here.
  task_manager::options o = with_workers(1);
  o.max_retained = 10;
  task_manager tasks(o);
  tasks.submit("y", [] {}).get();
  for (int i = 0; i < 10; ++i) tasks.submit("filler" + std::to_string(i), [] {}).get();
  REQUIRE(tasks.info("y").known == tether::task_known::expired);
  for (int i = 0; i < 1'100; ++i) tasks.submit("hot", [] {}).get();
  CHECK(tasks.info("y").known == tether::task_known::expired);
  CHECK(tasks.info("hot").known == tether::task_known::live);
}

TEST_CASE("stress: a lookup racing evictions finds each recent id filed or evicted, never unknown" *
          doctest::timeout(120)) {
  // Two threads, as two workers, file, finish and retire ids, each evicted at once (max_retained 0); another looks
  // up the newest filed id meanwhile. The ids are numbered in one sequence, and the two threads stay at most 256
  // ids ahead of the lookups, so the id looked up is still filed or among the newest 1,024 evictions: an eviction
  // remembers the id before it takes the record out of its table, also when the two threads' evictions reach the
  // graveyard in another order than they left retention.
  using namespace tether::detail;
  task_registry registry(std::chrono::seconds(600), 0);
  std::atomic<long> next{0}, filed{-1}, checked{-1};
  std::atomic<int> running{2};
  const long n = scaled(200'000, 4);
  auto make_fn = [] { return [] { return 1; }; };
  using body = task_body<int, decltype(make_fn())>;
  std::vector<std::thread> evictors;
  for (int e = 0; e < 2; ++e)
    evictors.emplace_back([&] {
      for (long i = next.fetch_add(1); i < n; i = next.fetch_add(1)) {
        while (i > checked.load(std::memory_order_acquire) + 256) std::this_thread::yield();
        std::string id = "id-" + std::to_string(i);
        const std::uint64_t hash = name_hash(id);
        ref<body> record(new body(make_fn(), std::move(id), hash, "", 1, tether::context{}));
        registry.insert(*record, [](task_record*) {});
        for (long seen = filed.load(); seen < i && !filed.compare_exchange_weak(seen, i);) {
        }
        record->finish(tether::task_status::succeeded, nullptr);
        registry.retire(*record);
      }
      running.fetch_sub(1, std::memory_order_release);
    });
  long unknown = 0, looked = 0;
  while (running.load(std::memory_order_acquire) != 0) {
    const long newest = filed.load(std::memory_order_acquire);
    if (newest < 0) continue;
    unknown += registry.find("id-" + std::to_string(newest)).known == tether::task_known::unknown;
    ++looked;
    checked.store(newest, std::memory_order_release);
  }
  for (std::thread& t : evictors) t.join();
  CHECK(unknown == 0);
  CHECK(looked > 0);
}

TEST_CASE("stress: the memory bound on evicted ids holds while several threads evict at once" * doctest::timeout(120)) {
  // Each thread files, finishes and retires records under random ids, as workers do; every retire evicts
  // (max_retained 0), so evicted ids pile up past their bound of 1,024 and generations of them are dropped as
  // fast. A watcher samples how many are held the whole time: never more than five quarters of the bound.
  using namespace tether::detail;
  task_registry registry(std::chrono::seconds(600), 0);
  std::atomic<bool> done{false};
  std::size_t most = 0;
  std::thread watcher([&] {
    while (!done.load(std::memory_order_acquire)) most = std::max(most, registry.evicted_ids());
  });
  auto make_fn = [] { return [] { return 1; }; };
  using body = task_body<int, decltype(make_fn())>;
  const int rounds = scaled(50'000, 4);
  std::vector<std::thread> threads;
  for (unsigned t = 0; t < 6; ++t)
    threads.emplace_back([&, t] {
      std::mt19937 rng(t);
      for (int i = 0; i < rounds; ++i) {
        std::string id = "id-" + std::to_string(rng() % 20'000);
        const std::uint64_t hash = tether::detail::name_hash(id);
        ref<body> record(new body(make_fn(), std::move(id), hash, "", 1, tether::context{}));
        registry.insert(*record, [](task_record*) {});
        record->finish(tether::task_status::succeeded, nullptr);
        registry.retire(*record);
      }
    });
  for (auto& t : threads) t.join();
  done.store(true, std::memory_order_release);
  watcher.join();
  CHECK(most <= 1280);
  // Of up to 20,000 distinct ids evicted, at most 1,280 are held, so generations were dropped; and the newest
  // 1,024 stay.
  CHECK(registry.evicted_ids() <= 1280);
  CHECK(registry.evicted_ids() > 1024);
}

TEST_CASE("the graveyard finds exactly an id's latest eviction among the newest bound, and holds at most 5/4" *
          doctest::timeout(60)) {
  // Against a model: for each hash, the number of its latest eviction; it must be found, with that eviction's time,
  // exactly when it is among the newest `bound`. Ids repeat (a few of them often), and 0 is among the hashes. All
  // within keep_for, so generations turn over by count only.
  using tether::detail::graveyard;
  using when = graveyard::time_point;
  std::mt19937_64 rng(7);
  for (const std::size_t bound : {1u, 2u, 3u, 5u, 7u, 64u, 1023u, 1024u, 1025u}) {
    for (const std::uint64_t ids : {3u, 50u, 100'000u}) {
      CAPTURE(bound);
      CAPTURE(ids);
      graveyard graves(bound, std::chrono::hours(1));
      std::map<std::uint64_t, long> latest;  // hash -> its latest eviction number
      long evictions = 0;
      std::size_t most = 0;
      int wrong = 0;
      for (int i = 0; i < 5'000; ++i) {
        const std::uint64_t hash = (rng() % ids) * 0x9e3779b97f4a7c15ULL;  // 0 when the draw is 0
        graves.add(hash, when(std::chrono::nanoseconds(evictions)));
        latest[hash] = evictions++;
        most = std::max(most, graves.size());
        if (i % 499 != 0 && i != 4'999) continue;
        for (const auto& [h, number] : latest) {
          const bool kept = evictions - number <= static_cast<long>(bound);
          const auto found = graves.find(h);
          if (kept != found.has_value() || (found && *found != when(std::chrono::nanoseconds(number)))) ++wrong;
        }
      }
      CHECK(wrong == 0);
      CHECK(most <= 5 * ((bound + 3) / 4));  // five generations of a quarter of the bound, rounded up
    }
  }
}

TEST_CASE("the id table finds every record it holds and no other, through shared tags, wrap-around and growth") {
  // A slot keeps a record's address and the low 16 bits of its hash; the table compares the rest (the hash, then
  // the id) in the record itself. Small: hashes crowd onto four homes at both ends of the array, so probe runs
  // wrap around and erasing moves entries back across the end; some records share a whole hash. Large: 40,000
  // records grow the table past 65,536 slots, where an entry's home no longer fits in those 16 bits and erase and
  // growth read it from the record.
  using namespace tether::detail;
  const auto record = [](const std::string& id, std::uint64_t hash) {
    return ref<task_record>(make_ref<task_body<void, void (*)()>>(+[] {}, id, hash, std::string("g"), 1u,
                                                                   tether::context()));
  };
  std::mt19937_64 rng(11);
  for (const bool small : {true, false}) {
    CAPTURE(small);
    table_hint hint;
    id_table table(hint);
    const std::size_t count = small ? 300 : 40'000;
    std::vector<ref<task_record>> held, gone;
    for (std::size_t i = 0; i < count; ++i) {
      const std::uint64_t low16[] = {0xffff, 0xfffe, 0x0000, 0x0001};
      std::uint64_t hash = small ? (rng() & ~std::uint64_t{0xffff}) | low16[rng() % 4] : rng();
      if (small && i % 10 == 9) hash = held.back()->hash;  // the same hash as another id
      held.push_back(record("t" + std::to_string(i), hash));
      table.reserve_one();
      table.insert(*held.back());
    }
    std::shuffle(held.begin(), held.end(), rng);
    // Small: the records whose home is at the array's end go first (`held` is erased from its back), so that erasing
    // moves entries back across the end; every record is looked for after each erase.
    const auto homed_before_end = [](const ref<task_record>& r) { return (r->hash & 0xffff) < 0xfffe; };
    if (small) std::stable_partition(held.begin(), held.end(), homed_before_end);
    std::size_t wrong = 0;
    for (std::size_t i = 0; i < count / 2; ++i) {
      id_table::slot* at = table.find(*held.back());
      REQUIRE(at);
      table.erase(*at);
      gone.push_back(std::move(held.back()));
      held.pop_back();
      if (small)
        for (const ref<task_record>& r : held) {
          const id_table::slot* at = table.find(*r);
          wrong += !at || table.find(r->id, r->hash) != at;
        }
    }
    CHECK(table.records() == held.size());
    for (const ref<task_record>& r : held) {
      const id_table::slot* by_id = table.find(r->id, r->hash);
      wrong += !by_id || by_id->record() != r.get() || table.find(*r) != by_id;
      // Another id with the same hash, and one whose hash differs only above the 16 bits the slot keeps.
      wrong += table.find(r->id + "x", r->hash) != nullptr;
      wrong += table.find(r->id, r->hash ^ (std::uint64_t{1} << 40)) != nullptr;
    }
    for (const ref<task_record>& r : gone) wrong += table.find(r->id, r->hash) != nullptr || table.find(*r) != nullptr;
    CHECK(wrong == 0);
  }
}

TEST_CASE("the graveyard tells apart hashes that share a slot's tag and home, and counts each eviction of an id") {
  // A slot keeps only the hash's top 24 bits and its home is the low bits: two hashes that agree on both, and differ
  // in between, must still be told apart (by the hash in the log).
  using tether::detail::graveyard;
  const auto at = [](long n) { return graveyard::time_point(std::chrono::nanoseconds(n)); };
  graveyard graves(1024, std::chrono::hours(1));
  graves.add(0xABCDEF0000000005ULL, at(1));
  CHECK(graves.find(0xABCDEF0000000005ULL) == at(1));
  CHECK_FALSE(graves.find(0xABCDEF0100000005ULL));
  // The same id evicted ten times: ten evictions held, and the latest one is the one found.
  for (long i = 2; i <= 11; ++i) graves.add(42, at(i));
  CHECK(graves.size() == 11);
  CHECK(graves.find(42) == at(11));
}

// Graveyard memory that fails on demand: `allocations_left` more succeed (all of them while negative), and each
// one fails anyway with probability `fail_one_in` (0: never).
struct failing_allocator {
  static inline long allocations_left = -1;
  static inline unsigned fail_one_in = 0;
  static inline std::mt19937 rng{5};
  static bool grant() noexcept {
    if (fail_one_in != 0 && rng() % fail_one_in == 0) return false;
    if (allocations_left == 0) return false;
    if (allocations_left > 0) --allocations_left;
    return true;
  }
  static tether::detail::graveyard::memory memory() {
    return {[](std::size_t count, std::size_t size) noexcept { return grant() ? std::calloc(count, size) : nullptr; },
            [](void* block, std::size_t size) noexcept { return grant() ? std::realloc(block, size) : nullptr; }};
  }
};

TEST_CASE("without memory the graveyard forgets evictions, and still numbers the later ones exactly") {
  // Bound 64: the newest 64 evictions are found. The first ten find no memory and are dropped; each seals its
  // generation, which then gives way to the next. Once memory comes back, evictions 10 to 73 must all be found,
  // and eviction 74 must push eviction 10 (not some later one) out of the newest 64.
  using tether::detail::graveyard;
  const auto at = [](long n) { return graveyard::time_point(std::chrono::nanoseconds(n)); };
  graveyard graves(64, std::chrono::hours(1), failing_allocator::memory());
  failing_allocator::allocations_left = 0;
  for (long i = 0; i < 10; ++i) graves.add(static_cast<std::uint64_t>(1000 + i), at(i));
  failing_allocator::allocations_left = -1;
  CHECK(graves.size() == 0);
  for (long i = 0; i < 10; ++i) CHECK_FALSE(graves.find(static_cast<std::uint64_t>(1000 + i)));
  for (long i = 10; i < 74; ++i) graves.add(static_cast<std::uint64_t>(2000 + i), at(i));
  int missing = 0;
  for (long i = 10; i < 74; ++i) missing += graves.find(static_cast<std::uint64_t>(2000 + i)) != at(i);
  CHECK(missing == 0);
  graves.add(3000, at(74));
  CHECK_FALSE(graves.find(2010));
  CHECK(graves.find(2011) == at(11));
}

TEST_CASE("a graveyard that runs out of memory now and then answers nothing false, and recovers" *
          doctest::timeout(60)) {
  // One allocation in three fails: logs and indexes cannot grow, generations get sealed, and emptying one cannot
  // take a fresh index. Whatever find() answers must still be an eviction of that id among the newest `bound`
  // (the latest one that was kept: a dropped later one may leave an earlier one to be found). Then memory comes
  // back, and after `bound` more evictions exactly those are found. (A sealed generation used to give way only
  // once the others held the bound, so that from then on every eviction was dropped until keep_for passed.)
  using tether::detail::graveyard;
  using when = graveyard::time_point;
  std::mt19937_64 rng(3);
  for (const std::size_t bound : {8u, 64u, 1024u}) {
    CAPTURE(bound);
    graveyard graves(bound, std::chrono::hours(1), failing_allocator::memory());
    failing_allocator::fail_one_in = 3;
    std::vector<std::uint64_t> hash_of;  // by eviction number; its time is the number
    int wrong = 0;
    const auto check_all = [&] {
      const long evictions = static_cast<long>(hash_of.size());
      for (long n = std::max(0L, evictions - 4 * static_cast<long>(bound)); n < evictions; ++n) {
        const auto found = graves.find(hash_of[static_cast<std::size_t>(n)]);
        if (!found) continue;
        const long number = static_cast<long>(found->time_since_epoch().count());
        const bool in_window = number < evictions && evictions - number <= static_cast<long>(bound);
        if (!in_window || hash_of[static_cast<std::size_t>(number)] != hash_of[static_cast<std::size_t>(n)]) ++wrong;
      }
    };
    for (int i = 0; i < 20'000; ++i) {
      const std::uint64_t hash = (rng() % 3'000 + 1) * 0x9e3779b97f4a7c15ULL;
      graves.add(hash, when(std::chrono::nanoseconds(static_cast<long>(hash_of.size()))));
      hash_of.push_back(hash);
      if (i % 1'999 == 0) check_all();
    }
    failing_allocator::fail_one_in = 0;
    const std::size_t before = hash_of.size();
    for (std::size_t i = 0; i < bound; ++i) {
      const std::uint64_t hash = (i + 1) * 0xc2b2ae3d27d4eb4fULL;  // not among the ids above
      graves.add(hash, when(std::chrono::nanoseconds(static_cast<long>(hash_of.size()))));
      hash_of.push_back(hash);
    }
    check_all();
    CHECK(wrong == 0);
    int missing = 0;
    for (std::size_t n = before; n < hash_of.size(); ++n)
      missing += graves.find(hash_of[n]) != when(std::chrono::nanoseconds(static_cast<long>(n)));
    CHECK(missing == 0);
  }
}

TEST_CASE("the graveyard keeps the newest bound that have not expired, also when generations turn over by time" *
          doctest::timeout(60)) {
  // Evictions come in bursts and lulls, so that some generations turn over by time (keep_for 1,000 ticks) and then
  // fill by count: an eviction among the newest `bound` that is younger than keep_for must still be found.
  using tether::detail::graveyard;
  using when = graveyard::time_point;
  std::mt19937_64 rng(11);
  for (const std::size_t bound : {4u, 64u, 1024u}) {
    CAPTURE(bound);
    const auto keep_for = std::chrono::nanoseconds(1'000);
    graveyard graves(bound, keep_for);
    std::vector<std::pair<std::uint64_t, long>> log;  // hash and time of each eviction
    long now = 0;
    int wrong = 0;
    std::size_t most = 0;
    for (int i = 0; i < 20'000; ++i) {
      now += rng() % 8 == 0 ? static_cast<long>(rng() % 600) : 0;  // a lull now and then, else a burst
      const std::uint64_t hash = (rng() % 100'000 + 1) * 0x9e3779b97f4a7c15ULL;
      graves.add(hash, when(std::chrono::nanoseconds(now)));
      log.emplace_back(hash, now);
      most = std::max(most, graves.size());
      if (i % 997 != 0) continue;
      // Each id's latest eviction among the newest `bound` must be found, unless it is older than keep_for.
      std::map<std::uint64_t, long> newest;
      for (std::size_t k = log.size(); k > 0 && log.size() - k < bound; --k)
        newest.emplace(log[k - 1].first, log[k - 1].second);  // the first seen, going back, is the latest
      for (const auto& [h, at] : newest) {
        if (now - at >= keep_for.count()) continue;  // expired: found or not, it reads unknown
        const auto found = graves.find(h);
        if (!found || *found != when(std::chrono::nanoseconds(at))) ++wrong;
      }
    }
    CHECK(wrong == 0);
    CHECK(most <= 2 * bound + 4);
  }
}

TEST_CASE("after generations turned over by time, a burst does not push out an eviction the bound still keeps" *
          doctest::timeout(60)) {
  // Bound 8 (two ids a generation), keep_for 1,000 ticks. Ids 1 to 4 come 300 ticks apart, so each starts a
  // generation of its own by time; then a burst of four at 950. Id 1 is then among the newest 8 evictions and 950
  // ticks old: it must still be found, although its generation is the oldest and the newest is full.
  using tether::detail::graveyard;
  const auto at = [](long n) { return graveyard::time_point(std::chrono::nanoseconds(n)); };
  graveyard graves(8, std::chrono::nanoseconds(1'000));
  for (std::uint64_t id = 1; id <= 4; ++id) graves.add(id, at(static_cast<long>(id - 1) * 300));
  for (std::uint64_t id = 5; id <= 8; ++id) graves.add(id, at(950));
  for (std::uint64_t id = 1; id <= 8; ++id) {
    CAPTURE(id);
    CHECK(graves.find(id));
  }
  CHECK(*graves.find(1) == at(0));
}

TEST_CASE("the graveyard takes a bound of any size, and then holds only what keep_for needs" *
          doctest::timeout(60)) {
  // max_retained = SIZE_MAX (results kept by time only) once made a generation of 0 ids that never turned over.
  // Generations then turn over by time alone: 100,000 evictions, one per tick, keep_for 100 ticks.
  tether::detail::graveyard graves(std::numeric_limits<std::size_t>::max(), std::chrono::nanoseconds(100));
  std::size_t most = 0;
  for (std::uint64_t i = 1; i <= 100'000; ++i) {
    graves.add(i, tether::detail::graveyard::time_point(std::chrono::nanoseconds(i)));
    most = std::max(most, graves.size());
  }
  CHECK(graves.find(100'000));
  CHECK(graves.find(99'950));
  CHECK(most <= 300);  // about two keep_for's worth, not every id ever evicted
}

TEST_CASE("name_hash spreads ids evenly over the id tables' low bits and the registry's shards") {
  // The id tables index by the low bits and the registry picks a shard by the top six: ids that differ only in a
  // counter, as most do, must spread over both like random numbers. (100,000 random hashes in 2^17 buckets put at
  // most about 8 in one, and 1,562 ± 40 in each of 64 shards.)
  using tether::detail::name_hash;
  for (const std::string prefix : {"", "task-", "session-42/report-", "a-rather-long-prefix-for-the-id-of-a-task-"}) {
    CAPTURE(prefix);
    std::vector<int> bucket(1 << 17), shard(64);
    std::vector<std::uint64_t> hashes;
    for (int i = 0; i < 100'000; ++i) {
      const std::uint64_t h = name_hash(prefix + std::to_string(i));
      hashes.push_back(h);
      ++bucket[h & ((1 << 17) - 1)];
      ++shard[h >> 58];
    }
    std::sort(hashes.begin(), hashes.end());
    CHECK(std::adjacent_find(hashes.begin(), hashes.end()) == hashes.end());  // no two alike
    CHECK(*std::max_element(bucket.begin(), bucket.end()) <= 12);
    CHECK(*std::min_element(shard.begin(), shard.end()) >= 1'300);
    CHECK(*std::max_element(shard.begin(), shard.end()) <= 1'850);
  }
  CHECK(name_hash("task-1") != name_hash("task-2"));
  CHECK(name_hash("abcdefgh-1") != name_hash("abcdefgh-2"));  // the tail word, overlapping the first one
}

TEST_CASE("a freed record's memory serves the next record of its size class" * doctest::skip(!TETHER_RECYCLE_MEMORY)) {
  using tether::detail::block_cache;
  void* first = block_cache::allocate(300);
  block_cache::deallocate(first, 300);
  void* second = block_cache::allocate(290);  // 257 to 320 bytes: the same class
  CHECK(second == first);
  void* other = block_cache::allocate(200);  // another class: other memory
  CHECK(other != second);
  block_cache::deallocate(other, 200);
  block_cache::deallocate(second, 290);
  void* big = block_cache::allocate(4096);  // too big to keep: plain operator new and delete
  CHECK(big != nullptr);
  block_cache::deallocate(big, 4096);
}

TEST_CASE("the blocks a thread keeps go to the shared shelf when it ends" * doctest::skip(!TETHER_RECYCLE_MEMORY)) {
  // A thread keeps freed blocks in its own lists, and passes them on 32 at a time; the rest it still holds when it
  // ends must not be lost. 1,000 bytes: a class that nothing else in this test binary uses.
  using tether::detail::block_cache;
  void* freed = nullptr;
  std::thread([&] {
    freed = block_cache::allocate(1000);
    block_cache::deallocate(freed, 1000);
  }).join();
  void* again = block_cache::allocate(990);
  CHECK(again == freed);
  block_cache::deallocate(again, 990);
}

TEST_CASE("after fork(), the child makes records even if another thread held a record cache lock then" *
          doctest::skip(TETHER_SANITIZED || !TETHER_RECYCLE_MEMORY) * doctest::timeout(120)) {
  // Two threads keep the cache busy, so that a fork often comes while one of them holds a lock. Each child then
  // uses the cache; one that hangs on a lock nobody will release is ended by its alarm after 10 s.
  using tether::detail::block_cache;
  std::atomic<bool> stop{false};
  std::vector<std::thread> busy;
  for (int t = 0; t < 2; ++t)
    busy.emplace_back([&] {
      while (!stop.load(std::memory_order_relaxed)) block_cache::deallocate(block_cache::allocate(300), 300);
    });
  int stuck = 0;
  for (int i = 0; i < 40; ++i) {
    const pid_t child = fork();
    if (child == 0) {
      alarm(10);
      for (int k = 0; k < 1000; ++k) block_cache::deallocate(block_cache::allocate(300), 300);
      _exit(0);
    }
    REQUIRE(child > 0);
    int status = 0;
    REQUIRE(waitpid(child, &status, 0) == child);
    stuck += !(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  }
  stop.store(true, std::memory_order_relaxed);
  for (auto& t : busy) t.join();
  CHECK(stuck == 0);
}

TEST_CASE("stress: blocks freed on other threads are handed out again once at a time" * doctest::timeout(120)) {
  // Four threads allocate blocks of every class, stamp them, and free blocks that other threads allocated. A block
  // handed out twice, or changed while it was free, shows as a stamp that is not its owner's.
  using tether::detail::block_cache;
  struct block {
    void* at;
    std::size_t size;
    std::uint64_t stamp;
  };
  std::mutex m;
  std::vector<block> live;  // guarded by m
  std::atomic<int> broken{0};
  const int rounds = scaled(200'000);
  std::vector<std::thread> threads;
  for (unsigned t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(t);
      for (int i = 0; i < rounds; ++i) {
        const std::size_t size = 8 + rng() % 1100;  // classes of 64 bytes up to 1 KiB, and some bigger
        block b{block_cache::allocate(size), size, rng()};
        std::memcpy(b.at, &b.stamp, sizeof b.stamp);
        std::optional<block> victim;
        {
          std::lock_guard lock(m);
          live.push_back(b);
          if (live.size() > 64) {
            const std::size_t k = rng() % live.size();
            victim = live[k];
            live[k] = live.back();
            live.pop_back();
          }
        }
        if (!victim) continue;
        std::uint64_t seen = 0;
        std::memcpy(&seen, victim->at, sizeof seen);
        if (seen != victim->stamp) ++broken;
        block_cache::deallocate(victim->at, victim->size);
      }
    });
  for (auto& t : threads) t.join();
  for (const block& b : live) block_cache::deallocate(b.at, b.size);
  CHECK(broken.load() == 0);
}

TEST_CASE("list shows a group's tasks, or all of them") {
  task_manager tasks(with_workers(1));
  tasks.submit("a1", [] {}, {.group = "alice"}).get();
  tasks.submit("a2", [] {}, {.group = "alice"}).get();
  tasks.submit("b1", [] {}, {.group = "bob"}).get();
  CHECK(tasks.list("alice").size() == 2);
  CHECK(tasks.list("bob").size() == 1);
  CHECK(tasks.list("bob").front().group == "bob");
  CHECK(tasks.list().size() == 3);
  CHECK(tasks.list("carol").empty());
}

TEST_CASE("cancel_group cancels one group's queued and running tasks and leaves the others") {
  task_manager tasks(with_workers(2));
  std::promise<void> running;
  auto alice_running = tasks.submit("a-run", [&](task_context& t) {
    running.set_value();
    while (!t.stop_requested()) tether::this_task::sleep_for(1ms);  // keeps its worker free
    t.throw_if_cancelled();
  }, {.group = "alice"});
  running.get_future().wait();
  thread_gate gate;  // holds the other worker so that what follows stays queued
  tasks.submit("hold", gate.blocker(), {.group = "ops"});
  gate.wait_started();
  std::vector<tether::task_handle<void>> alice, bob;
  // The first worker still runs fibers: keep new tasks queued by holding it too.
  thread_gate gate2;
  tasks.submit("hold2", gate2.blocker(), {.group = "ops"});
  gate2.wait_started();
  for (int i = 0; i < 5; ++i) alice.push_back(tasks.submit("a" + std::to_string(i), [] {}, {.group = "alice"}));
  for (int i = 0; i < 3; ++i) bob.push_back(tasks.submit("b" + std::to_string(i), [] {}, {.group = "bob"}));
  CHECK(tasks.cancel_group("alice") == 6);
  for (auto& h : alice) CHECK(h.status() == task_status::cancelled);
  CHECK(tasks.info("a0").reason == task_end::group_cancelled);
  gate.open();
  gate2.open();
  CHECK_THROWS_AS(alice_running.get(), tether::task_cancelled);
  CHECK(tasks.info("a-run").reason == task_end::group_cancelled);
  for (auto& h : bob) h.get();
  CHECK(tasks.cancel_group("nobody") == 0);
}

TEST_CASE("cancel_all cancels everything queued and running") {
  task_manager tasks(with_workers(1));
  thread_gate gate;
  auto held = tasks.submit("hold", gate.blocker());
  gate.wait_started();
  std::vector<tether::task_handle<void>> queued;
  for (int i = 0; i < 10; ++i)
    queued.push_back(tasks.submit(std::to_string(i), [] {}, {.group = std::to_string(i % 3)}));
  CHECK(tasks.cancel_all() == 11);
  for (auto& h : queued) CHECK(h.status() == task_status::cancelled);
  gate.open();
  held.get();  // it ignored the request
  CHECK(tasks.info("hold").reason == task_end::cancelled_by_user);
}

TEST_CASE("max_queued and max_queued_per_group make submit throw queue_full") {
  task_manager::options o = with_workers(1);
  o.max_queued = 3;
  o.max_queued_per_group = 2;
  task_manager tasks(o);
  thread_gate gate;
  tasks.submit("hold", gate.blocker());
  gate.wait_started();
  tasks.submit("a1", [] {}, {.group = "a"});
  tasks.submit("a2", [] {}, {.group = "a"});
  CHECK(error_of([&] { tasks.submit("a3", [] {}, {.group = "a"}); }) == tether::errc::queue_full);
  tasks.submit("a2", [] {}, {.group = "a"});  // replacing a queued task does not count twice
  tasks.submit("b1", [] {}, {.group = "b"});
  CHECK(error_of([&] { tasks.submit("c1", [] {}, {.group = "c"}); }) == tether::errc::queue_full);
  CHECK(tasks.info("a3").known == tether::task_known::unknown);  // a refused submit leaves nothing behind
  gate.open();
  tasks.shutdown();
  CHECK(tasks.info("b1").status == task_status::succeeded);
}

TEST_CASE("groups share one worker round-robin: a lone task does not wait behind a thousand") {
  task_manager tasks(with_workers(1));
  thread_gate gate;
  tasks.submit("hold", gate.blocker());
  gate.wait_started();
  std::mutex m;
  std::vector<std::string> order;
  auto record = [&](std::string name) {
    return [&, name] {
      std::lock_guard lock(m);
      order.push_back(name);
    };
  };
  for (int i = 0; i < 1000; ++i) tasks.submit("big" + std::to_string(i), record("big"), {.group = "big"});
  tasks.submit("small", record("small"), {.group = "small"});
  gate.open();
  tasks.shutdown();
  REQUIRE(order.size() == 1001);
  const auto at = std::find(order.begin(), order.end(), "small") - order.begin();
  CHECK(at <= 2);
}

TEST_CASE("a group's weight gives it that many turns per round") {
  task_manager tasks(with_workers(1));
  thread_gate gate;
  tasks.submit("hold", gate.blocker());
  gate.wait_started();
  std::mutex m;
  std::string order;
  for (int i = 0; i < 30; ++i) {
    tasks.submit("h" + std::to_string(i), [&] { std::lock_guard l(m); order += 'H'; }, {.group = "heavy", .weight = 3});
    tasks.submit("l" + std::to_string(i), [&] { std::lock_guard l(m); order += 'l'; }, {.group = "light"});
  }
  gate.open();
  tasks.shutdown();
  REQUIRE(order.size() == 60);
  CHECK(order.substr(0, 16) == "HHHlHHHlHHHlHHHl");
}

TEST_CASE("a task submitted while the awake worker is taken starts on an idle worker, not after it"
          * doctest::timeout(120)) {
  // Regression: submits that found a worker spinning left their tasks to it, and nobody woke the other worker,
  // so the second task waited behind the first. A second submit right behind the first is the common way in.
  for (const auto& [workers, poll] : {std::pair{2u, 1000}, std::pair{4u, 1000}, std::pair{2u, 0}}) {
    CAPTURE(workers);
    CAPTURE(poll);
    task_manager::options o = with_workers(workers);
    o.standby_poll = std::chrono::microseconds(poll);  // 0: no standby, every such submit wakes a worker
    task_manager tasks(o);
    for (int round = 0; round < scaled(200, 2); ++round) {
      thread_gate gate;
      tasks.submit("holder", gate.blocker());
      auto quick = tasks.submit("quick", [] {});
      // The holder keeps its worker until we open the gate, which we do only after the quick one ran: if it
      // waited for the holder's worker, it would wait for ever (10 s guards the suite).
      const bool ran = quick.wait_for(10s) == task_status::succeeded;
      gate.open();
      if (!ran) {
        FAIL_CHECK("round " << round << ": the quick task waited behind the blocked one");
        break;
      }
      tasks.wait("holder", 10s);
    }
  }
}

TEST_CASE("stress: while one worker is held, a thousand tasks in a row all run on the other" * doctest::timeout(120)) {
  // The held worker is awake, so the other one sleeps as the standby and submits do not wake it: it must find
  // each task on its own, however the submit and its sleep interleave. Without a standby (standby_poll 0), every
  // submit must wake it instead.
  for (const int poll : {1000, 0}) {
    CAPTURE(poll);
    task_manager::options o = with_workers(2);
    o.standby_poll = std::chrono::microseconds(poll);
    task_manager tasks(o);
    thread_gate gate;
    tasks.submit("holder", gate.blocker());
    gate.wait_started();
    int ran = 0;
    for (int i = 0; i < scaled(1000); ++i) {
      if (tasks.submit("quick-" + std::to_string(i), [] {}).wait_for(10s) != task_status::succeeded) break;
      ++ran;
    }
    gate.open();
    CHECK(ran == scaled(1000));
    CHECK(tasks.wait("holder", 10s) == task_status::succeeded);
  }
}

TEST_CASE("a fiber that a task starts itself wakes from Boost's own sleep after the task ended") {
  // An idle worker sleeps without Boost's dispatcher only while no such fiber lives on it: the dispatcher is what
  // serves Boost's timers. One worker, and nothing submitted after, so that no other wake-up comes.
  for (auto policy : {boost::fibers::launch::post, boost::fibers::launch::dispatch}) {
    task_manager tasks(with_workers(1));
    auto woke = std::make_shared<std::promise<void>>();
    auto woken = woke->get_future();
    tasks.submit("starter", [woke, policy] {
      boost::fibers::fiber(policy, [woke] {
        boost::this_fiber::sleep_for(5ms);
        woke->set_value();
      }).detach();
    }).get();
    CHECK(woken.wait_for(10s) == std::future_status::ready);
  }
}

TEST_CASE("stress: cancel's outcome matches what happened to the task" * doctest::timeout(120)) {
  // removed_from_queue means the function never ran, also for a task a worker had already taken but not started;
  // stop_requested means it ran (and was asked to stop); already_finished means it ran to its end.
  for (unsigned workers : {1u, 2u}) {
    CAPTURE(workers);
    task_manager tasks(with_workers(workers));
    int mismatches = 0, removed = 0, stopped = 0, finished = 0;
    for (int i = 0; i < scaled(20'000); ++i) {
      auto ran = std::make_shared<std::atomic<bool>>(false);
      tasks.submit("warm" + std::to_string(i % 3), [] {});  // keeps the workers taking tasks back to back
      auto h = tasks.submit("t" + std::to_string(i), [ran] { ran->store(true); });
      const auto outcome = h.cancel();
      h.wait();
      const bool did_run = ran->load();
      switch (outcome) {
        case tether::cancel_outcome::removed_from_queue:
          ++removed;
          mismatches += did_run || h.status() != task_status::cancelled;
          break;
        case tether::cancel_outcome::stop_requested: ++stopped; mismatches += !did_run; break;
        case tether::cancel_outcome::already_finished: ++finished; mismatches += !did_run; break;
        default: ++mismatches;
      }
    }
    CAPTURE(removed);
    CAPTURE(stopped);
    CAPTURE(finished);
    CHECK(mismatches == 0);
    CHECK(removed > 0);
  }
}

TEST_CASE("a task runs under the submitter's context and the worker is empty again afterwards") {
  const tether::context_key<std::string> user("user");
  task_manager tasks(with_workers(1));
  tether::task_handle<std::string> seen = [&] {
    tether::context_scope scope(tether::context::current().with(user, "alice"));
    return tasks.submit("who", [&] { return *tether::context::current().get(user); });
  }();
  CHECK(seen.get() == "alice");
  CHECK(tasks.submit("after", [&] { return tether::context::current().get(user) == nullptr; }).get());
}

TEST_CASE("tasks interleaving on one worker each see their own context at every switch") {
  const tether::context_key<int> key("who");
  for (unsigned workers : {1u, 2u}) {
    CAPTURE(workers);
    task_manager tasks(with_workers(workers));
    std::atomic<int> wrong{0};
    std::vector<tether::task_handle<void>> handles;
    for (int who = 0; who < 8; ++who) {
      tether::context_scope scope(tether::context::current().with(key, who));
      handles.push_back(tasks.submit("ctx" + std::to_string(who), [&, who] {
        for (int step = 0; step < 50; ++step) {
          if (step % 2 == 0) tether::this_task::yield();
          else tether::this_task::sleep_for(std::chrono::microseconds(100));
          const int* seen = tether::context::current().get(key);
          if (!seen || *seen != who) ++wrong;
        }
      }));
    }
    for (auto& h : handles) h.get();
    CHECK(wrong == 0);
    CHECK(tasks.submit("empty", [&] { return tether::context::current().get(key) == nullptr; }).get());
  }
}

TEST_CASE("sleep_for suspends only the fiber: 10,000 sleeping tasks on 2 workers are all asleep at once"
          * doctest::timeout(60)) {
  task_manager tasks(with_workers(2));
  const int n = scaled(10'000, 4);
  std::atomic<int> asleep{0}, most{0};
  std::vector<tether::task_handle<void>> handles;
  handles.reserve(n);
  for (int i = 0; i < n; ++i)
    handles.push_back(tasks.submit("sleep" + std::to_string(i), [&] {
      const int now = asleep.fetch_add(1) + 1;
      int seen = most.load();
      while (now > seen && !most.compare_exchange_weak(seen, now)) {
      }
      // A first 100 ms sleep; more only if the submitter is still slower than that. If a sleep held its thread,
      // only 2 tasks could ever be asleep and this would never end.
      do tether::this_task::sleep_for(100ms);
      while (most.load() < n);
    }));
  for (auto& h : handles) h.get();
  CHECK(most == n);
}

TEST_CASE("stress: sleeps that end while their fiber is still switching away" * doctest::timeout(120)) {
  // A deadline a microsecond or two away often passes between the sleep's own check and the worker's next look at
  // its timers, which then finds the sleeping fiber ready again before it has left the thread. Boost.Fiber
  // cannot resume a running fiber: the worker must run another one, or its dispatcher, first.
  task_manager tasks(with_workers(2));
  std::vector<tether::task_handle<int>> handles;
  for (int t = 0; t < 8; ++t)
    handles.push_back(tasks.submit("short-sleeps-" + std::to_string(t), [t] {
      int slept = 0;
      for (; slept < scaled(5000); ++slept)
        tether::this_task::sleep_for(std::chrono::nanoseconds(300 * ((t + slept) % 8)));
      return slept;
    }));
  for (auto& h : handles) CHECK(h.get() == scaled(5000));
}

TEST_CASE("sleep_for wakes early and throws task_cancelled when the task is cancelled") {
  task_manager tasks(with_workers(1));
  std::promise<void> sleeping;
  auto h = tasks.submit("nap", [&] {
    sleeping.set_value();
    tether::this_task::sleep_for(1h);
  });
  sleeping.get_future().wait();
  CHECK(h.cancel() == tether::cancel_outcome::stop_requested);
  CHECK_THROWS_AS(h.get(), tether::task_cancelled);
  CHECK(tasks.info("nap").status == task_status::cancelled);
  tether::this_task::sleep_for(1us);  // outside a task: a plain sleep
  CHECK(tether::this_task::current() == nullptr);
}

TEST_CASE("a task waiting for another task suspends its fiber, not its worker") {
  task_manager tasks(with_workers(1));
  std::promise<tether::task_handle<int>> later;
  std::shared_future<tether::task_handle<int>> later_future = later.get_future().share();
  auto waiter = tasks.submit("waiter", [&] {
    auto later_handle = later_future.get();
    return later_handle.get() + 1;
  });
  // With one worker, "later" can only run while "waiter" is suspended in get().
  later.set_value(tasks.submit("later", [] {
    tether::this_task::yield();
    return 41;
  }));
  CHECK(waiter.get() == 42);
  CHECK(tasks.submit("waits", [&] { return tasks.wait("later", 1h); }).get() == task_status::succeeded);
}

TEST_CASE("yield lets the other tasks of the worker run") {
  task_manager tasks(with_workers(1));
  std::atomic<bool> flag{false};
  auto spinner = tasks.submit("spin", [&] {
    while (!flag) tether::this_task::yield();
  });
  tasks.submit("setter", [&] { flag = true; }).get();
  spinner.get();
}

TEST_CASE("a task waiting for itself or shutting its own manager down gets would_deadlock" *
          doctest::skip(asan_build)) {
  task_manager tasks(with_workers(1));
  std::promise<tether::task_handle<void>> self;
  std::shared_future<tether::task_handle<void>> self_future = self.get_future().share();
  auto h = tasks.submit("self", [&] {
    auto me = self_future.get();
    CHECK(error_of([&] { me.get(); }) == tether::errc::would_deadlock);
    CHECK(error_of([&] { tasks.wait("self", 1s); }) == tether::errc::would_deadlock);
    CHECK(error_of([&] { tasks.shutdown(); }) == tether::errc::would_deadlock);
    CHECK(tether::this_task::current() != nullptr);
  });
  self.set_value(h);
  h.get();
}

// A queued record of a task that does nothing, for tests of the fair queue on its own.
auto plain_task(const char* id, const char* group) {
  return tether::detail::make_ref<tether::detail::task_body<void, void (*)()>>(
      +[] {}, std::string(id), tether::detail::name_hash(id), std::string(group), 1u, tether::context());
}

// Makes the fair queue's groups, or fails to while `fail` is set.
struct failing_maker {
  static inline bool fail = false;
  static std::unique_ptr<tether::detail::queue_group> make(const std::string& name) {
    if (fail) throw std::bad_alloc();
    return tether::detail::fair_queue::make_group(name);
  }
};

TEST_CASE("a task whose new group cannot be made waits parked, in order, and can be cancelled or listed there") {
  // Submits put tasks on the queue's intake, and the worker that next takes the lock files them into their groups;
  // without memory for a new group the task is parked, since that worker cannot throw. Made to fail on demand.
  using tether::detail::fair_queue;
  fair_queue queue({}, failing_maker::make);
  auto a1 = plain_task("a1", "a"), a2 = plain_task("a2", "a"), a3 = plain_task("a3", "a");
  auto b1 = plain_task("b1", "b"), c1 = plain_task("c1", "c");
  failing_maker::fail = true;
  queue.push(*a1, nullptr);
  queue.push(*a2, nullptr);
  queue.push(*b1, nullptr);
  CHECK_FALSE(queue.pop());  // none of the three could be filed
  CHECK(queue.queued() == 3);
  CHECK(queue.remove(*a2));  // cancelled while parked
  CHECK(queue.queued() == 2);
  std::vector<tether::detail::ref<tether::detail::task_record>> taken, running;
  queue.take_matching([](std::string_view group) { return group == "b"; }, taken, running);
  REQUIRE(taken.size() == 1);
  CHECK(taken[0].get() == b1.get());
  CHECK(queue.queued() == 1);
  failing_maker::fail = false;
  queue.push(*a3, nullptr);
  auto first = queue.pop();  // the parked one first, then the one pushed after it
  auto second = queue.pop();
  CHECK(first.get() == a1.get());
  CHECK(second.get() == a3.get());
  CHECK_FALSE(queue.pop());
  CHECK(queue.queued() == 0);
  queue.finish(*first);
  queue.finish(*second);
  // close() lists a parked task as live (shutdown waits for it or cancels it), and refuses later pushes.
  failing_maker::fail = true;
  queue.push(*c1, nullptr);
  CHECK_FALSE(queue.pop());
  const auto live = queue.close();
  CHECK(live.size() == 1);
  CHECK((!live.empty() && live[0].get() == c1.get()));
  CHECK(error_of([&] { queue.push(*plain_task("c2", "c"), nullptr); }) == tether::errc::executor_stopped);
  failing_maker::fail = false;
}

TEST_CASE("take_matching takes nothing out when it throws part way") {
  // A task taken out of the queue and then dropped by an exception would never end: whoever waits for it would wait
  // for ever. take_matching() first does all that may throw (the match, growing its vectors), then takes out. The
  // match throws here on its second call, while the first parked task already matched; the first version had taken
  // that one out by then, and it was lost.
  using tether::detail::fair_queue;
  fair_queue queue({}, failing_maker::make);
  auto p1 = plain_task("p1", "x"), p2 = plain_task("p2", "y"), q1 = plain_task("q1", "z");
  failing_maker::fail = true;
  queue.push(*p1, nullptr);
  queue.push(*p2, nullptr);
  CHECK_FALSE(queue.pop());  // both parked
  int calls = 0;
  std::vector<tether::detail::ref<tether::detail::task_record>> taken, running;
  const auto throwing = [&](std::string_view) -> bool {
    if (++calls == 2) throw std::runtime_error("match failed");
    return true;
  };
  CHECK_THROWS_AS(queue.take_matching(throwing, taken, running), std::runtime_error);
  CHECK(taken.empty());
  CHECK(queue.queued() == 2);
  // The same with filed tasks (the next drain files all three): the third call throws, after two groups matched.
  failing_maker::fail = false;
  queue.push(*q1, nullptr);
  calls = -1;
  CHECK_THROWS_AS(queue.take_matching(throwing, taken, running), std::runtime_error);
  CHECK(taken.empty());
  CHECK(queue.queued() == 3);
  // Nothing was lost: all three come out, parked ones first.
  std::vector<const tether::detail::task_record*> order;
  while (auto t = queue.pop()) {
    order.push_back(t.get());
    queue.finish(*t);
  }
  CHECK(order == std::vector<const tether::detail::task_record*>{p1.get(), p2.get(), q1.get()});
  CHECK(queue.queued() == 0);
}

// Makes the fair queue's groups, or fails to for the group "new" while `fail_new` is set.
struct selective_maker {
  static inline bool fail_new = false;
  static std::unique_ptr<tether::detail::queue_group> make(const std::string& name) {
    if (fail_new && name == "new") throw std::bad_alloc();
    return tether::detail::fair_queue::make_group(name);
  }
};

TEST_CASE("while a parked task blocks, tasks behind it in the intake can be cancelled, listed and replaced") {
  // A task parked for want of memory must not keep the intake from being filed: tasks pushed after it are then
  // parked behind it, where remove(), take_matching() and a replacing push find them. (The first version stopped
  // filing at the parked task, and these took intake tasks for parked ones: a lost task, a task run after its
  // cancel, and a use after free under ASan. Found in review.)
  using tether::detail::fair_queue;
  const auto drain = [](fair_queue& queue) {
    std::vector<tether::detail::ref<tether::detail::task_record>> out;
    while (auto t = queue.pop()) {
      queue.finish(*t);
      out.push_back(std::move(t));
    }
    return out;
  };
  SUBCASE("remove") {
    fair_queue queue({}, selective_maker::make);
    auto p = plain_task("p", "new"), t = plain_task("t", "other");
    selective_maker::fail_new = true;
    queue.push(*p, nullptr);
    CHECK_FALSE(queue.pop());  // p parked
    queue.push(*t, nullptr);   // t in the intake
    CHECK(queue.remove(*t));
    CHECK(queue.queued() == 1);
    selective_maker::fail_new = false;
    const auto out = drain(queue);
    REQUIRE(out.size() == 1);  // p, and not t
    CHECK(out[0].get() == p.get());
    CHECK(queue.queued() == 0);
  }
  SUBCASE("take_matching") {
    fair_queue queue({}, selective_maker::make);
    auto p = plain_task("p", "new"), t = plain_task("t", "other");
    selective_maker::fail_new = true;
    queue.push(*p, nullptr);
    CHECK_FALSE(queue.pop());
    queue.push(*t, nullptr);
    std::vector<tether::detail::ref<tether::detail::task_record>> taken, running;
    queue.take_matching([](std::string_view) { return true; }, taken, running);
    CHECK(taken.size() == 2);
    CHECK(queue.queued() == 0);
    selective_maker::fail_new = false;
    CHECK(drain(queue).empty());
  }
  SUBCASE("a replacing push") {
    fair_queue queue({}, selective_maker::make);
    auto p = plain_task("p", "new"), old = plain_task("k", "other");
    auto fresh = plain_task("k", "other");
    selective_maker::fail_new = true;
    queue.push(*p, nullptr);
    CHECK_FALSE(queue.pop());
    queue.push(*old, nullptr);      // in the intake, behind p
    queue.push(*fresh, old.get());  // takes `old` out, and waits behind p too
    CHECK(queue.queued() == 2);
    selective_maker::fail_new = false;
    const auto out = drain(queue);
    REQUIRE(out.size() == 2);
    CHECK(out[0].get() == p.get());
    CHECK(out[1].get() == fresh.get());
  }
  selective_maker::fail_new = false;
}

TEST_CASE("stress: submits racing shutdown are each refused or brought to an end before shutdown returns" *
          doctest::timeout(120)) {
  // Three threads submit until they are refused while shutdown() closes the queue. Every task accepted must have
  // ended by the time shutdown() returns: a push that slipped into the queue's intake after shutdown took it would
  // stay queued for ever.
  for (const auto mode : {tether::shutdown_mode::drain, tether::shutdown_mode::cancel}) {
    for (int round = 0; round < scaled(20, 4); ++round) {
      CAPTURE(round);
      task_manager tasks(with_workers(2));
      std::atomic<long> accepted{0}, ran{0}, other_errors{0};
      std::vector<std::vector<tether::task_handle<void>>> handles(3);
      std::vector<std::thread> producers;
      for (int p = 0; p < 3; ++p)
        producers.emplace_back([&, p] {
          for (int i = 0;; ++i) {
            const auto e = error_of([&] {
              handles[p].push_back(tasks.submit("p" + std::to_string(p) + "-" + std::to_string(i), [&] { ++ran; },
                                                {.group = "g" + std::to_string(i % 3)}));
              ++accepted;
            });
            if (e == tether::errc::executor_stopped) return;
            if (e) ++other_errors;
          }
        });
      while (accepted < 300) std::this_thread::yield();
      const auto report = tasks.shutdown(mode);
      for (auto& t : producers) t.join();
      long unfinished = 0, succeeded = 0, cancelled = 0;
      for (auto& list : handles)
        for (auto& h : list) {
          const task_status s = h.status();
          succeeded += s == task_status::succeeded;
          cancelled += s == task_status::cancelled;
          unfinished += s != task_status::succeeded && s != task_status::failed && s != task_status::cancelled;
        }
      CHECK(unfinished == 0);
      CHECK(other_errors == 0);
      CHECK(succeeded == ran.load());
      CHECK(succeeded + cancelled == accepted.load());
      if (mode == tether::shutdown_mode::drain) CHECK(cancelled == 0);
      CHECK(report.completed + report.cancelled_before_start + report.stopped_while_running <=
            static_cast<std::size_t>(accepted));
    }
  }
}

TEST_CASE("shutdown(drain) runs everything queued and reports it; later submits throw executor_stopped") {
  task_manager tasks(with_workers(1));
  thread_gate gate;
  tasks.submit("hold", gate.blocker());
  gate.wait_started();
  std::atomic<int> ran{0};
  for (int i = 0; i < 10; ++i) tasks.submit(std::to_string(i), [&] { ++ran; });
  // Opens the gate once shutdown() refuses new tasks. Its first probe may come before that and then counts.
  int probes = 0;
  std::thread opener([&] {
    const auto reject = tether::task_options{.duplicate = tether::on_duplicate::reject};
    while (error_of([&] {
             tasks.submit("probe", [&] { ++ran; }, reject);
             ++probes;
           }) != tether::errc::executor_stopped)
      std::this_thread::yield();
    gate.open();
  });
  const auto report = tasks.shutdown(tether::shutdown_mode::drain);
  opener.join();
  CHECK(ran == 10 + probes);
  CHECK(report.completed == 11 + static_cast<std::size_t>(probes));
  CHECK(report.cancelled_before_start == 0);
  CHECK(report.stopped_while_running == 0);
  CHECK(error_of([&] { tasks.submit("late", [] {}); }) == tether::errc::executor_stopped);
  CHECK(tasks.shutdown().completed == report.completed);  // later calls return the first report
}

TEST_CASE("shutdown(cancel) cancels the queued tasks, stops the running ones and wakes every waiter") {
  for (unsigned workers : {1u, 2u}) {
    CAPTURE(workers);
    task_manager tasks(with_workers(workers));
    std::atomic<int> sleeping{0};
    std::vector<tether::task_handle<void>> running;
    for (unsigned i = 0; i < workers * 3; ++i)
      running.push_back(tasks.submit("run" + std::to_string(i), [&] {
        ++sleeping;
        tether::this_task::sleep_for(1h);
      }));
    thread_gate gate;
    auto hold = tasks.submit("hold", gate.blocker());
    gate.wait_started();
    while (sleeping.load() != static_cast<int>(workers * 3)) std::this_thread::yield();
    std::vector<tether::task_handle<void>> queued;
    if (workers == 1)
      for (int i = 0; i < 5; ++i) queued.push_back(tasks.submit("q" + std::to_string(i), [] {}));
    std::atomic<int> woke{0};
    std::vector<std::thread> waiters;
    for (auto& h : queued) waiters.emplace_back([&woke, h]() mutable {
      try {
        h.get();
      } catch (const tether::task_cancelled&) {
        ++woke;
      }
    });
    std::thread opener([&] {
      // Open only once shutdown has dealt with everything, so that no queued task slips through first.
      const auto all_cancelled = [&] {
        return std::all_of(queued.begin(), queued.end(), [](auto& h) { return h.status() == task_status::cancelled; });
      };
      while (!tasks.info("hold").cancel_requested || !all_cancelled()) std::this_thread::yield();
      gate.open();
    });
    const auto report = tasks.shutdown(tether::shutdown_mode::cancel);
    opener.join();
    for (auto& t : waiters) t.join();
    CHECK(woke == static_cast<int>(queued.size()));
    CHECK(report.stopped_while_running == workers * 3);
    CHECK(report.cancelled_before_start == queued.size());
    CHECK(report.completed == 1);  // "hold" ignored the request
    for (auto& h : running) CHECK(h.status() == task_status::cancelled);
    CHECK(tasks.info("run0").reason == task_end::shutdown);
  }
}

TEST_CASE("the destructor cancels, joins, and leaves handles usable") {
  std::optional<tether::task_handle<int>> handle;
  {
    task_manager tasks(with_workers(2));
    std::promise<void> running;
    handle = tasks.submit("forever", [&](task_context& t) {
      running.set_value();
      while (true) {
        tether::this_task::sleep_for(1h);  // throws task_cancelled at the destructor
        t.publish(0);
      }
      return 0;
    });
    running.get_future().wait();
  }
  CHECK(handle->status() == task_status::cancelled);
  CHECK_THROWS_AS(handle->get(), tether::task_cancelled);
  CHECK(handle->cancel() == tether::cancel_outcome::already_finished);
}

TEST_CASE("the public enums have fmt formatters") {
  CHECK(fmt::format("{}", task_status::running) == "running");
  CHECK(fmt::format("{}", tether::task_known::expired) == "expired");
  CHECK(fmt::format("{}", task_end::group_cancelled) == "group_cancelled");
  CHECK(fmt::format("{}", tether::on_duplicate::reject) == "reject");
  CHECK(fmt::format("{}", tether::cancel_outcome::removed_from_queue) == "removed_from_queue");
  CHECK(fmt::format("{:>8}", tether::shutdown_mode::drain) == "   drain");
}

TEST_CASE("stress: a million tasks from 4 producers with random cancels and replaces all end exactly once"
          * doctest::timeout(120)) {
  const int per_producer = scaled(250'000, 12);
  const int producers = 4;
  const int n = per_producer * producers;
  for (unsigned workers : {2u, 4u}) {
    CAPTURE(workers);
    task_manager::options o = with_workers(workers);
    o.max_retained = 1000;
    task_manager tasks(o);
    // Per submission: 0 never started, 1 started, 2 returned.
    std::unique_ptr<std::atomic<std::uint8_t>[]> state(new std::atomic<std::uint8_t>[n]());
    std::atomic<int> double_starts{0};
    std::atomic<long> succeeded{0}, failed{0}, cancelled{0}, removed_bad{0}, unfinished{0}, mismatched{0};
    auto check = [&](int i, tether::task_handle<int>& h) {
      h.wait();
      const task_status s = h.status();
      const std::uint8_t st = state[i].load();
      if (s == task_status::succeeded) ++succeeded, mismatched += st != 2;
      else if (s == task_status::failed) ++failed, mismatched += st != 1;
      else if (s == task_status::cancelled) ++cancelled, mismatched += st == 2;
      else ++unfinished;
    };
    auto produce = [&](int p) {
      std::mt19937 rng(static_cast<unsigned>(p * 7919 + workers));
      std::vector<std::pair<int, tether::task_handle<int>>> window;
      const std::string prefix = "p" + std::to_string(p) + "-";
      for (int k = 0; k < per_producer; ++k) {
        const int i = p * per_producer + k;
        const std::string id = prefix + std::to_string(rng() % 512);  // ids repeat: replaces happen
        auto h = tasks.submit(id, [&, i](task_context& t) {
          if (state[i].exchange(1) != 0) ++double_starts;
          if (i % 16 == 0) throw std::runtime_error("planned failure");
          if (i % 4 == 0) t.publish(i);
          state[i].store(2);
          return i;
        }, {.group = "g" + std::to_string(rng() % 8)});
        if (rng() % 8 == 0 && !window.empty()) {
          auto& [j, victim] = window[rng() % window.size()];
          if (victim.cancel() == tether::cancel_outcome::removed_from_queue) removed_bad += state[j].load() != 0;
        }
        window.emplace_back(i, std::move(h));
        if (window.size() == 4096) {
          for (auto& [j, w] : window) check(j, w);
          window.clear();
        }
      }
      for (auto& [j, w] : window) check(j, w);
    };
    std::vector<std::thread> threads;
    for (int p = 0; p < producers; ++p) threads.emplace_back(produce, p);
    for (auto& t : threads) t.join();
    const auto report = tasks.shutdown();
    CHECK(double_starts == 0);
    CHECK(unfinished == 0);
    CHECK(mismatched == 0);
    CHECK(removed_bad == 0);
    CHECK(succeeded + failed + cancelled == n);
    CHECK(failed > 0);
    CHECK(cancelled > 0);
    CHECK(report.completed + report.cancelled_before_start + report.stopped_while_running == 0);
    CHECK(tasks.list().size() <= 1000);
  }
}

#if __has_include(<tether/affine_executor.hpp>)
#  include <tether/affine_executor.hpp>

TEST_CASE("affine_executor::call from a task suspends only the task's fiber" * doctest::timeout(30)) {
  tether::affine_executor owner;
  std::thread owner_thread([&] { owner.run(); });
  {
    task_manager tasks(with_workers(1));
    std::atomic<bool> second_started{false};
    // The call returns only once the second task started, which on one worker needs the first one suspended.
    auto first = tasks.submit("calls", [&] {
      return owner.call([&] {
        while (!second_started) std::this_thread::yield();
        return 7;
      });
    });
    auto second = tasks.submit("second", [&] { second_started = true; });
    CHECK(first.get() == 7);
    second.get();
  }
  owner.stop();
  owner_thread.join();
}
#endif
