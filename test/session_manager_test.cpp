// SPDX-License-Identifier: BSL-1.0
// tether::session_manager: the state model, callback order, contexts, deliver_on, the wiring to tasks, 100,000
// sessions on a manual clock, and sixteen threads churning sessions in real time.
#include <tether/session_manager.hpp>

#include <tether/affine_executor.hpp>
#include <tether/detail/timer_wheel.hpp>
#include <tether/detail/wait.hpp>
#include <tether/session_tasks.hpp>
#include <tether/task_manager.hpp>

#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;
using tether::end_reason;
using tether::session_state;
using ms = std::chrono::milliseconds;

namespace {

/// Writes every callback down as a line ("start a", "beat a", "end a closed"), in the order they ran.
class recorder {
public:
  tether::session_callbacks callbacks() {
    return {.on_start = [this](const tether::session_info& s) { add("start " + s.id); },
            .on_heartbeat = [this](const tether::session_info& s) { add("beat " + s.id); },
            .on_end = [this](const tether::session_info& s, end_reason r) { add(fmt::format("end {} {}", s.id, r)); }};
  }
  void add(std::string line) {
    std::lock_guard lock(mutex_);
    lines_.push_back(std::move(line));
  }
  std::vector<std::string> take() {
    std::lock_guard lock(mutex_);
    return std::exchange(lines_, {});
  }
  std::size_t count(std::string_view line) const {
    std::lock_guard lock(mutex_);
    return static_cast<std::size_t>(std::count(lines_.begin(), lines_.end(), line));
  }

private:
  mutable std::mutex mutex_;
  std::vector<std::string> lines_;
};

/// Collects what the manager reports instead of printing it.
struct reports {
  std::mutex mutex;
  std::vector<std::string> where;
  std::vector<std::string> what;
  auto handler() {
    return [this](std::exception_ptr e, std::string_view w) {
      std::string text;
      try {
        std::rethrow_exception(e);
      } catch (const std::exception& x) {
        text = x.what();
      }
      std::lock_guard lock(mutex);
      where.emplace_back(w);
      what.push_back(std::move(text));
    };
  }
  std::size_t size() {
    std::lock_guard lock(mutex);
    return where.size();
  }
};

tether::session_manager::options on(tether::manual_clock& clock, ms interval = 1000ms, ms timeout = 3000ms,
                                     ms grace = 0ms) {
  return {.heartbeat_interval = interval, .timeout = timeout, .grace = grace, .clock = &clock};
}

using lines = std::vector<std::string>;

}  // namespace

namespace doctest {
template <>
struct StringMaker<std::vector<std::string>> {
  static String convert(const std::vector<std::string>& v) { return fmt::format("{}", fmt::join(v, " | ")).c_str(); }
};
}  // namespace doctest

namespace {

}  // namespace

TEST_CASE("open returns a fresh id for each session, and on_start runs once the manager has settled") {
  tether::manual_clock clock;
  recorder rec;
  tether::session_manager sessions(on(clock));
  const auto a = sessions.open(rec.callbacks());
  const auto b = sessions.open(rec.callbacks());
  CHECK(!a.empty());
  CHECK(a != b);
  sessions.settle();
  CHECK(rec.take() == lines{"start " + a, "start " + b});
  CHECK(sessions.state(a) == session_state::active);
  CHECK(sessions.active() == 2);
}

TEST_CASE("an id given to open is used as it is, and opening it again while in use throws invalid_argument") {
  tether::manual_clock clock;
  tether::session_manager sessions(on(clock));
  CHECK(sessions.open({}, "user-7") == "user-7");
  try {
    sessions.open({}, "user-7");
    FAIL("a second open of the same id must throw");
  } catch (const tether::error& e) {
    CHECK(e.code() == tether::errc::invalid_argument);
    CHECK(std::string(e.what()).starts_with("tether::session_manager::open:"));
    CHECK(std::string(e.what()).find("'user-7'") != std::string::npos);
  }
}

TEST_CASE("heartbeats arrive every heartbeat_interval while the session is touched, and carry its last touch") {
  tether::manual_clock clock;
  std::vector<std::chrono::steady_clock::time_point> touches;
  std::mutex mutex;
  tether::session_manager sessions(on(clock, 100ms, 250ms));
  const auto id = sessions.open({.on_heartbeat = [&](const tether::session_info& s) {
    std::lock_guard lock(mutex);
    touches.push_back(s.last_touch);
  }});
  for (int i = 0; i < 10; ++i) {
    clock.advance(50ms);
    sessions.touch(id);
    clock.advance(50ms);
  }
  std::lock_guard lock(mutex);
  REQUIRE(touches.size() == 10);
  // The beat at 100 ms * k sees the touch made at 100 ms * k - 50 ms.
  CHECK(touches.back() == std::chrono::steady_clock::time_point(950ms));
  CHECK(sessions.state(id) == session_state::active);
}

TEST_CASE("a manual clock that jumps far delivers every beat due before the end, in order") {
  tether::manual_clock clock;
  recorder rec;
  tether::session_manager sessions(on(clock, 100ms, 1000ms));
  const auto id = sessions.open(rec.callbacks(), "a");
  clock.advance(5000ms);
  lines expected{"start a"};
  for (int i = 0; i < 9; ++i) expected.push_back("beat a");  // 100 ... 900 ms; at 1000 ms it has expired
  expected.push_back("end a expired");
  CHECK(rec.take() == expected);
}

TEST_CASE("an untouched session is disconnected after timeout, gets no beats, and ends as expired after grace") {
  tether::manual_clock clock;
  recorder rec;
  tether::session_manager sessions(on(clock, 1000ms, 3000ms, 2000ms));
  const auto id = sessions.open(rec.callbacks(), "a");
  clock.advance(2999ms);
  CHECK(sessions.state(id) == session_state::active);
  clock.advance(1ms);
  CHECK(sessions.state(id) == session_state::disconnected);
  CHECK(sessions.active() == 1);
  clock.advance(1999ms);
  CHECK(sessions.state(id) == session_state::disconnected);
  CHECK(rec.take() == lines{"start a", "beat a", "beat a"});
  clock.advance(1ms);
  CHECK(rec.take() == lines{"end a expired"});
  CHECK(sessions.active() == 0);
  CHECK_THROWS_AS(sessions.state(id), tether::error);
}

TEST_CASE("a touch within grace resumes a disconnected session without an end, and its beats resume") {
  tether::manual_clock clock;
  recorder rec;
  tether::session_manager sessions(on(clock, 1000ms, 3000ms, 5000ms));
  const auto id = sessions.open(rec.callbacks(), "a");
  clock.advance(4000ms);
  REQUIRE(sessions.state(id) == session_state::disconnected);
  sessions.touch(id);
  CHECK(sessions.state(id) == session_state::active);
  rec.take();
  clock.advance(1000ms);
  CHECK(rec.take() == lines{"beat a"});
  clock.advance(1999ms);  // 2999 ms after the touch: still active
  CHECK(sessions.state(id) == session_state::active);
  clock.advance(1ms);
  CHECK(sessions.state(id) == session_state::disconnected);
  clock.advance(5000ms);
  CHECK(rec.take() == lines{"beat a", "end a expired"});
}

TEST_CASE("with zero grace a session ends as soon as it times out; a zero timeout never expires") {
  tether::manual_clock clock;
  recorder rec;
  tether::session_manager quick(on(clock, 1000ms, 1500ms, 0ms));
  tether::session_manager never(on(clock, 1000ms, 0ms));
  quick.open(rec.callbacks(), "q");
  never.open(rec.callbacks(), "n");
  clock.advance(1499ms);
  CHECK(rec.count("end q expired") == 0);
  clock.advance(1ms);
  CHECK(rec.count("end q expired") == 1);
  clock.advance(3600s);
  CHECK(never.state("n") == session_state::active);
  CHECK(rec.count("beat n") == 3601);
}

TEST_CASE("close ends a session once with reason closed; afterwards touch, state and context_of see it gone") {
  tether::manual_clock clock;
  recorder rec;
  tether::session_manager sessions(on(clock));
  const auto id = sessions.open(rec.callbacks(), "a");
  CHECK(sessions.close(id));
  CHECK_FALSE(sessions.close(id));
  CHECK_FALSE(sessions.close("never-opened"));
  sessions.settle();
  CHECK(rec.take() == lines{"start a", "end a closed"});
  CHECK_FALSE(sessions.try_touch(id));
  try {
    sessions.touch(id);
    FAIL("touch of a closed session must throw");
  } catch (const tether::error& e) {
    CHECK(e.code() == tether::errc::unknown_session);
    CHECK(std::string(e.what()).starts_with("tether::session_manager::touch:"));
    CHECK(std::string(e.what()).find("'a'") != std::string::npos);
  }
  CHECK_THROWS_AS(sessions.state(id), tether::error);
  CHECK_THROWS_AS(sessions.context_of(id), tether::error);
  CHECK(sessions.open({}, "a") == "a");  // the id is free again
}

TEST_CASE("a session reads ended, and its id stays taken, until its on_end has returned") {
  tether::manual_clock clock;
  tether::affine_executor exec;
  recorder rec;
  tether::session_manager sessions({.deliver_on = &exec, .clock = &clock});
  exec.poll();  // this thread owns the executor
  const auto id = sessions.open(rec.callbacks(), "a");
  sessions.close(id);
  sessions.settle();
  CHECK(sessions.state(id) == session_state::ended);
  CHECK(sessions.active() == 0);
  CHECK_THROWS_AS(sessions.open({}, "a"), tether::error);
  CHECK(rec.take().empty());
  exec.poll();
  CHECK(rec.take() == lines{"start a", "end a closed"});
  CHECK_THROWS_AS(sessions.state(id), tether::error);
  CHECK(sessions.open({}, "a") == "a");
}

TEST_CASE("a probe that answers false ends the session as probe_failed; one that throws counts as alive") {
  tether::manual_clock clock;
  recorder rec;
  reports errors;
  tether::session_manager sessions(on(clock, 1000ms, 0ms));
  sessions.set_error_handler(errors.handler());
  std::atomic<int> asked{0};
  sessions.set_probe([&](std::string_view id) {
    ++asked;
    if (id == "thrower") throw std::runtime_error("probe broke");
    return id != "gone";
  });
  sessions.open(rec.callbacks(), "gone");
  sessions.open(rec.callbacks(), "thrower");
  rec.take();
  clock.advance(1000ms);
  CHECK(asked == 2);
  CHECK(rec.count("end gone probe_failed") == 1);
  CHECK(rec.count("beat gone") == 0);
  CHECK(rec.count("beat thrower") == 1);
  REQUIRE(errors.size() == 1);
  CHECK(errors.where[0] == "tether::session_manager: the probe of session 'thrower'");
  CHECK(errors.what[0] == "probe broke");
  CHECK(sessions.state("thrower") == session_state::active);
}

TEST_CASE("callbacks see the session's context, which is revoked right after on_end returns") {
  const tether::context_key<std::string> user("user", true);
  tether::manual_clock clock;
  tether::session_manager sessions(on(clock));
  std::string seen_at_start;
  bool revoked_in_end = true;
  tether::context kept;
  std::string id;
  {
    tether::context_scope scope(tether::context{}.with(user, "ada"));
    id = sessions.open({.on_start = [&](const tether::session_info&) { seen_at_start = *tether::context::current().get(user); },
                        .on_end = [&](const tether::session_info& s, end_reason) {
                          revoked_in_end = tether::context::current().revoked();
                          kept = s.ctx;
                        }});
  }
  sessions.settle();
  CHECK(seen_at_start == "ada");
  CHECK_FALSE(sessions.context_of(id).revoked());
  CHECK(*sessions.context_of(id).get(user) == "ada");
  sessions.close(id);
  sessions.settle();
  CHECK_FALSE(revoked_in_end);
  CHECK(kept.revoked());
  CHECK(kept.stop_token().stop_requested());
  try {
    (void)kept.get(user);
    FAIL("a revoked session's sensitive key must not be readable");
  } catch (const tether::error& e) {
    CHECK(e.code() == tether::errc::context_revoked);
  }
}

TEST_CASE("a callback that throws is reported with its session, and the manager carries on") {
  tether::manual_clock clock;
  reports errors;
  recorder rec;
  tether::session_manager sessions(on(clock, 1000ms, 0ms));
  sessions.set_error_handler(errors.handler());
  auto callbacks = rec.callbacks();
  callbacks.on_heartbeat = [](const tether::session_info&) { throw std::runtime_error("beat broke"); };
  sessions.open(callbacks, "a");
  sessions.open(rec.callbacks(), "b");
  clock.advance(2000ms);
  CHECK(rec.count("beat b") == 2);
  REQUIRE(errors.size() == 2);
  CHECK(errors.where[0] == "tether::session_manager: on_heartbeat of session 'a'");
  CHECK(errors.what[1] == "beat broke");
  sessions.close("a");
  sessions.settle();
  CHECK(rec.count("end a closed") == 1);
}

TEST_CASE("callbacks may open, touch and close sessions, and settle from one throws would_deadlock") {
  tether::manual_clock clock;
  recorder rec;
  reports errors;
  tether::session_manager sessions(on(clock, 1000ms, 0ms));
  sessions.set_error_handler(errors.handler());
  auto a = rec.callbacks();
  a.on_start = [&](const tether::session_info& s) {
    rec.add("start " + s.id);
    sessions.open(rec.callbacks(), "b");
  };
  a.on_heartbeat = [&](const tether::session_info& s) {
    rec.add("beat " + s.id);
    sessions.touch("a");
    sessions.close("b");
    sessions.settle();
  };
  sessions.open(a, "a");
  sessions.settle();
  clock.advance(1000ms);
  CHECK(rec.take() == lines{"start a", "start b", "beat a", "beat b", "end b closed"});
  REQUIRE(errors.size() == 1);
  CHECK(errors.what[0].starts_with("tether::session_manager::settle:"));
}

TEST_CASE("on_first_session and on_idle run on every change between no sessions and some") {
  tether::manual_clock clock;
  recorder rec;
  tether::session_manager sessions(on(clock));
  sessions.on_first_session([&] { rec.add(tether::context::current().empty() ? "first" : "first in a context"); });
  sessions.on_idle([&] { rec.add("idle"); });
  sessions.open(rec.callbacks(), "a");
  sessions.open(rec.callbacks(), "b");
  sessions.close("a");
  sessions.close("b");
  sessions.settle();
  sessions.open(rec.callbacks(), "c");
  sessions.close("c");
  sessions.settle();
  CHECK(rec.take() == lines{"first", "start a", "start b", "end a closed", "end b closed", "idle", "first",
                            "start c", "end c closed", "idle"});
}

TEST_CASE("shutdown ends every open session with reason shutdown, and later opens throw executor_stopped") {
  tether::manual_clock clock;
  recorder rec;
  {
    tether::session_manager sessions(on(clock, 1000ms, 3000ms, 1000ms));
    sessions.open(rec.callbacks(), "a");
    sessions.open(rec.callbacks(), "b");
    clock.advance(3000ms);  // b is disconnected
    sessions.touch("a");
    sessions.shutdown();
    CHECK(sessions.active() == 0);
    CHECK_THROWS_AS(sessions.open({}), tether::error);
    sessions.shutdown();  // idempotent
    sessions.settle();    // returns at once
    clock.advance(1s);  // a shut-down manager does not hold the clock up
  }
  CHECK(rec.count("end a shutdown") == 1);
  CHECK(rec.count("end b shutdown") == 1);
}

TEST_CASE("destroying the manager ends every session with shutdown, also those not yet started") {
  tether::manual_clock clock;
  recorder rec;
  {
    tether::session_manager sessions(on(clock));
    for (int i = 0; i < 100; ++i) sessions.open(rec.callbacks(), std::to_string(i));
  }
  const auto log = rec.take();
  CHECK(log.size() == 200);
  for (int i = 0; i < 100; ++i) {
    const auto start = std::find(log.begin(), log.end(), "start " + std::to_string(i));
    const auto end = std::find(log.begin(), log.end(), "end " + std::to_string(i) + " shutdown");
    CHECK(start < end);
    CHECK(end != log.end());
  }
}

TEST_CASE("deliver_on runs every callback on the executor's thread, in order, and nothing before it runs") {
  tether::manual_clock clock;
  tether::affine_executor exec;
  recorder rec;
  std::vector<std::thread::id> threads;
  tether::session_manager sessions({.heartbeat_interval = 1000ms, .deliver_on = &exec, .clock = &clock});
  sessions.on_first_session([&] { threads.push_back(std::this_thread::get_id()); });
  auto callbacks = rec.callbacks();
  callbacks.on_heartbeat = [&](const tether::session_info& s) {
    threads.push_back(std::this_thread::get_id());
    rec.add("beat " + s.id);
  };
  sessions.open(callbacks, "a");
  clock.advance(2000ms);
  sessions.close("a");
  sessions.settle();
  CHECK(rec.take().empty());
  exec.poll();
  CHECK(rec.take() == lines{"start a", "beat a", "beat a", "end a closed"});
  REQUIRE(threads.size() == 3);
  for (auto t : threads) CHECK(t == std::this_thread::get_id());
}

TEST_CASE("destroying a manager on its deliver_on thread runs the final on_end callbacks there") {
  tether::manual_clock clock;
  recorder rec;
  reports errors;
  tether::affine_executor exec;
  std::thread::id ended_on;
  {
    tether::session_manager sessions({.deliver_on = &exec, .clock = &clock});
    sessions.set_error_handler(errors.handler());
    exec.poll();
    sessions.open({.on_end = [&](const tether::session_info&, end_reason r) {
                    ended_on = std::this_thread::get_id();
                    rec.add(fmt::format("end {}", r));
                  }},
                  "a");
    sessions.settle();
  }
  CHECK(rec.take() == lines{"end shutdown"});
  CHECK(ended_on == std::this_thread::get_id());
  exec.poll();
  CHECK(errors.size() == 0);
}

TEST_CASE("when deliver_on stops, callbacks are skipped and reported once, but sessions still end") {
  tether::manual_clock clock;
  recorder rec;
  reports errors;
  tether::affine_executor exec;
  tether::session_manager sessions({.deliver_on = &exec, .clock = &clock});
  sessions.set_error_handler(errors.handler());
  const auto sub = sessions.subscribe_end([&](const tether::session_info& s, end_reason r) {
    rec.add(fmt::format("told {} {}", s.id, r));
  });
  exec.poll();
  sessions.open(rec.callbacks(), "a");
  sessions.open(rec.callbacks(), "b");
  const auto ctx = sessions.context_of("a");
  sessions.settle();
  exec.stop();
  sessions.close("a");
  sessions.settle();
  CHECK(ctx.revoked());
  CHECK(sessions.active() == 1);
  sessions.shutdown();
  CHECK(rec.take() == lines{"told a closed", "told b shutdown"});
  CHECK(errors.size() == 1);
}

TEST_CASE("end subscribers hear of every end after on_end, and never again once unsubscribed") {
  tether::manual_clock clock;
  recorder rec;
  tether::session_manager sessions(on(clock));
  tether::session_subscription sub = sessions.subscribe_end([&](const tether::session_info& s, end_reason r) {
    rec.add(fmt::format("told {} {} {}", s.id, r, tether::context::current().revoked() ? "revoked" : "live"));
  });
  CHECK(static_cast<bool>(sub));
  sessions.open(rec.callbacks(), "a");
  sessions.close("a");
  sessions.settle();
  CHECK(rec.take() == lines{"start a", "end a closed", "told a closed live"});
  sub.reset();
  CHECK_FALSE(static_cast<bool>(sub));
  sessions.open(rec.callbacks(), "b");
  sessions.close("b");
  sessions.settle();
  CHECK(rec.take() == lines{"start b", "end b closed"});
}

TEST_CASE("a subscriber may unsubscribe itself, and unsubscribing elsewhere waits for a running call") {
  tether::manual_clock clock;
  tether::session_manager sessions(on(clock));
  std::atomic<int> calls{0};
  tether::session_subscription self;
  self = sessions.subscribe_end([&](const tether::session_info&, end_reason) {
    ++calls;
    self.reset();
  });
  tether::detail::event entered, release;
  std::atomic<bool> finished{false};
  tether::session_subscription slow = sessions.subscribe_end([&](const tether::session_info&, end_reason) {
    entered.set();
    release.wait();
    finished = true;
  });
  sessions.open({}, "a");
  sessions.close("a");
  entered.wait();
  bool finished_when_reset = false;
  std::thread other([&] {
    slow.reset();
    finished_when_reset = finished;
  });
  release.set();
  other.join();
  CHECK(finished_when_reset);
  sessions.open({}, "b");
  sessions.close("b");
  sessions.settle();
  CHECK(calls == 1);
}

namespace {
struct fake_tasks {
  std::mutex mutex;
  std::vector<std::string> cancelled;
  std::size_t cancel_group(std::string_view group) {
    std::lock_guard lock(mutex);
    cancelled.emplace_back(group);
    return 1;
  }
};
}  // namespace

TEST_CASE("cancel_tasks_on_end cancels the task group named by each ending session's id") {
  tether::manual_clock clock;
  fake_tasks tasks;
  tether::session_manager sessions(on(clock, 1000ms, 2000ms));
  {
    auto wiring = tether::cancel_tasks_on_end(sessions, tasks);
    sessions.open({}, "a");
    sessions.open({}, "b");
    sessions.close("a");
    clock.advance(2000ms);
    CHECK(tasks.cancelled == std::vector<std::string>{"a", "b"});
  }
  sessions.open({}, "c");
  sessions.close("c");
  sessions.settle();
  CHECK(tasks.cancelled.size() == 2);
}

TEST_CASE("wired to a task_manager, a session's end cancels its queued and running tasks and no other session's" *
          doctest::timeout(30)) {
  tether::manual_clock clock;
  tether::task_manager tasks(tether::task_manager::options{.workers = 1});
  tether::session_manager sessions(on(clock));
  const auto wiring = tether::cancel_tasks_on_end(sessions, tasks);
  const auto a = sessions.open({}), b = sessions.open({});
  // A task that runs until it is asked to stop, yielding the one worker to the others meanwhile. It returns rather
  // than throw task_cancelled: an exception thrown on a fiber stack confuses AddressSanitizer (docs/sanitizers.md).
  const auto until_cancelled = [](tether::task_context& t) {
    while (!t.stop_requested()) tether::this_task::yield();
  };
  auto a1 = tasks.submit("a1", until_cancelled, {.group = a});
  auto a2 = tasks.submit("a2", until_cancelled, {.group = a});
  auto b1 = tasks.submit("b1", until_cancelled, {.group = b});
  CHECK(sessions.close(a));
  sessions.settle();  // the end, and with it the cancel, has run on the manager thread
  a1.wait();
  a2.wait();
  for (const char* id : {"a1", "a2"}) {
    CAPTURE(id);
    const auto info = tasks.info(id);
    CHECK(info.cancel_requested);
    CHECK(info.reason == tether::task_end::group_cancelled);
  }
  CHECK_FALSE(tasks.info("b1").cancel_requested);
  CHECK(tasks.info("b1").reason == tether::task_end::none);
  CHECK(sessions.close(b));
  sessions.settle();
  b1.wait();
  CHECK(tasks.info("b1").reason == tether::task_end::group_cancelled);
}

TEST_CASE("options out of range throw invalid_argument naming the option") {
  auto rejects = [](tether::session_manager::options o, std::string_view name) {
    try {
      tether::session_manager sessions(o);
      FAIL("options must be rejected: " << name);
    } catch (const tether::error& e) {
      CHECK(e.code() == tether::errc::invalid_argument);
      CHECK(std::string(e.what()).starts_with("tether::session_manager::session_manager:"));
      CHECK(std::string(e.what()).find(name) != std::string::npos);
    }
  };
  rejects({.heartbeat_interval = 0ms}, "heartbeat_interval");
  rejects({.timeout = -1ms}, "timeout");
  rejects({.grace = -5ms}, "grace");
  tether::manual_clock clock;
  CHECK_THROWS_AS(clock.advance(-1ms), tether::error);
}

TEST_CASE("end_reason and session_state format as their names") {
  CHECK(fmt::format("{} {} {} {}", end_reason::closed, end_reason::expired, end_reason::probe_failed,
                    end_reason::shutdown) == "closed expired probe_failed shutdown");
  CHECK(fmt::format("{} {} {}", session_state::active, session_state::disconnected, session_state::ended) ==
        "active disconnected ended");
}

TEST_CASE("the timer wheel fires each entry at its deadline, in deadline order, also beyond one round") {
  tether::detail::timer_wheel<int> wheel(10, 8, 0);  // one round is 80 time units
  std::vector<std::pair<std::int64_t, int>> fired;
  auto fire = [&](std::int64_t at, int& item) { fired.emplace_back(at, item); };
  wheel.insert(35, 1);
  wheel.insert(5, 2);
  wheel.insert(1000, 3);
  wheel.insert(36, 4);
  CHECK(wheel.next_due() == 10);
  wheel.advance_to(35, fire);
  CHECK(fired == std::vector<std::pair<std::int64_t, int>>{{5, 2}, {35, 1}});
  wheel.advance_to(999, fire);
  CHECK(fired.size() == 3);
  CHECK(wheel.size() == 1);
  wheel.advance_to(1000, fire);
  CHECK(fired.back() == std::pair<std::int64_t, int>{1000, 3});
  CHECK(wheel.size() == 0);
  CHECK(wheel.next_due() == -1);
}

TEST_CASE("the timer wheel fires what a firing entry inserts, when that is due too") {
  tether::detail::timer_wheel<int> wheel(10, 8, 0);
  std::vector<std::int64_t> fired;
  wheel.insert(3, 0);
  wheel.advance_to(500, [&](std::int64_t at, int& n) {
    fired.push_back(at);
    if (n < 20) wheel.insert(at + 7 * (n % 2), n + 1);  // every other one lands in the slot being fired
  });
  CHECK(fired.size() == 21);
  CHECK(std::is_sorted(fired.begin(), fired.end()));
  CHECK(fired.back() == 73);
}

TEST_CASE("one manager thread keeps 100,000 sessions: a beat each per interval, and all of them expire" *
          doctest::timeout(120)) {
  const std::size_t n = TETHER_SANITIZED ? 10'000 : 100'000;
  tether::manual_clock clock;
  std::atomic<std::size_t> starts{0}, beats{0}, ends{0};
  tether::session_manager sessions({.heartbeat_interval = 2s, .timeout = 6s, .clock = &clock});
  const tether::session_callbacks callbacks{
      .on_start = [&](const tether::session_info&) { ++starts; },
      .on_heartbeat = [&](const tether::session_info&) { ++beats; },
      .on_end = [&](const tether::session_info&, end_reason r) { ends += r == end_reason::expired; }};
  std::vector<std::string> ids;
  for (std::size_t i = 0; i < n; ++i) ids.push_back(sessions.open(callbacks));
  sessions.settle();
  CHECK(starts == n);
  clock.advance(2s);
  CHECK(beats == n);
  for (std::size_t i = 0; i < n / 2; ++i) sessions.touch(ids[i]);
  clock.advance(4s);  // beats at 4 s for all; at 6 s the untouched half expires and the touched half beats
  CHECK(beats == 2 * n + n / 2);
  CHECK(ends == n - n / 2);
  CHECK(sessions.active() == n / 2);
  clock.advance(2s);
  CHECK(ends == n);
  CHECK(sessions.active() == 0);
}

namespace {
/// What a churn session saw. `busy` catches two callbacks of one session at once.
struct tracker {
  std::atomic<int> starts{0}, beats{0}, ends{0}, busy{0}, faults{0}, closed{0};
  std::atomic<end_reason> reason{end_reason::shutdown};
  std::atomic<std::size_t>* all_ends = nullptr;  // counts the ends of every tracker, for the test to wait on

  void enter() {
    if (busy.fetch_add(1) != 0) ++faults;
  }
  void leave() { busy.fetch_sub(1); }
  tether::session_callbacks callbacks() {
    return {.on_start =
                [this](const tether::session_info&) {
                  enter();
                  if (starts.fetch_add(1) != 0 || beats != 0 || ends != 0) ++faults;
                  leave();
                },
            .on_heartbeat =
                [this](const tether::session_info&) {
                  enter();
                  if (starts != 1 || ends != 0) ++faults;
                  ++beats;
                  leave();
                },
            .on_end =
                [this](const tether::session_info&, end_reason r) {
                  enter();
                  if (starts != 1 || ends.fetch_add(1) != 0) ++faults;
                  reason = r;
                  leave();
                  all_ends->fetch_add(1);
                  all_ends->notify_all();
                }};
  }
};

/// One churning thread: opens its share of sessions and closes, touches or abandons each at random.
void churn(tether::session_manager& sessions, std::vector<tracker>& trackers, unsigned thread, unsigned threads) {
  std::minstd_rand random(thread + 1);
  for (std::size_t i = thread; i < trackers.size(); i += threads) {
    const auto id = std::to_string(i);
    sessions.open(trackers[i].callbacks(), id);
    const auto other = std::to_string(random() % trackers.size());
    switch (random() % 4) {
      case 0: trackers[i].closed += sessions.close(id); break;
      case 1:
        for (auto k = random() % 5; k > 0; --k) sessions.try_touch(id);
        trackers[i].closed += sessions.close(id);
        break;
      case 2: break;  // abandoned: it expires
      case 3:
        sessions.try_touch(id);
        sessions.try_touch(other);
        if (sessions.close(other)) ++trackers[std::stoul(other)].closed;
        break;
    }
  }
}
}  // namespace

TEST_CASE("sixteen threads churning 20,000 sessions in real time: one start and one end each, never overlapping" *
          doctest::timeout(300)) {
  const std::size_t total = TETHER_SANITIZED ? 3'000 : 20'000;
  for (const bool on_executor : {false, true}) {
    for (const unsigned threads : {1u, 4u, 16u}) {
      CAPTURE(on_executor);
      CAPTURE(threads);
      std::vector<tracker> trackers(total);
      std::atomic<std::size_t> ends{0};
      for (tracker& t : trackers) t.all_ends = &ends;
      tether::affine_executor exec;
      std::thread runner;
      if (on_executor) runner = std::thread([&] { exec.run(); });
      tether::session_manager sessions({.heartbeat_interval = 1ms, .timeout = 4ms, .grace = 2ms,
                                        .deliver_on = on_executor ? &exec : nullptr});
      std::vector<std::thread> workers;
      for (unsigned t = 0; t < threads; ++t)
        workers.emplace_back([&, t] { churn(sessions, trackers, t, threads); });
      for (auto& w : workers) w.join();
      // The sessions nobody closed expire on their own within milliseconds: wait for every end (the test's timeout
      // guards against one that never comes), so that none of them ends by shutdown.
      for (std::size_t seen = ends.load(); seen < total; seen = ends.load()) ends.wait(seen);
      CHECK(sessions.active() == 0);
      sessions.shutdown();
      exec.stop();
      if (runner.joinable()) runner.join();
      std::size_t bad = 0, closed = 0, expired = 0;
      for (const tracker& t : trackers) {
        const end_reason expected = t.closed == 1 ? end_reason::closed : end_reason::expired;
        bad += t.starts != 1 || t.ends != 1 || t.faults != 0 || t.closed > 1 || t.reason != expected;
        closed += t.closed;
        expired += t.reason == end_reason::expired;
      }
      CHECK(bad == 0);
      CHECK(closed > 0);
      CHECK(expired > 0);
    }
  }
}
