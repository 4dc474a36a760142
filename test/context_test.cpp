// SPDX-License-Identifier: BSL-1.0
// tether::context: snapshots, scopes, bind, lifetimes and revocation, the fiber hook, allocation, and stress.
#include <tether/context.hpp>

#include <doctest/doctest.h>

#include <boost/fiber/algo/algorithm.hpp>
#include <boost/fiber/context.hpp>
#include <boost/fiber/fiber.hpp>
#include <boost/fiber/operations.hpp>
#include <boost/fiber/properties.hpp>
#include <boost/fiber/scheduler.hpp>

#include <atomic>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <sys/wait.h>
#include <unistd.h>

// Counts this thread's allocations, to show that capture, install and restore allocate nothing.
namespace {
thread_local std::size_t allocations = 0;
}
// noinline: inlined into callers, g++ would pair a new-expression with the free() below and warn.
[[gnu::noinline]] void* operator new(std::size_t size) {
  ++allocations;
  if (void* p = std::malloc(size ? size : 1)) return p;
  throw std::bad_alloc();
}
[[gnu::noinline]] void* operator new[](std::size_t size) { return ::operator new(size); }
[[gnu::noinline]] void operator delete(void* p) noexcept { std::free(p); }
[[gnu::noinline]] void operator delete[](void* p) noexcept { std::free(p); }
[[gnu::noinline]] void operator delete(void* p, std::size_t) noexcept { std::free(p); }
[[gnu::noinline]] void operator delete[](void* p, std::size_t) noexcept { std::free(p); }

namespace {

const tether::context_key<std::string> user_key{"user", /*sensitive=*/true};
const tether::context_key<int> session_key{"session"};
const tether::context_key<int> task_key{"task"};

std::string user_of(const tether::context& ctx) {
  const std::string* user = ctx.get(user_key);
  return user ? *user : std::string("<none>");
}

}  // namespace

TEST_CASE("a key is named, may be sensitive, and must have a name") {
  CHECK(user_key.name() == "user");
  CHECK(user_key.sensitive());
  CHECK_FALSE(session_key.sensitive());
  try {
    tether::context_key<int> nameless{""};
    FAIL("an empty key name was accepted");
  } catch (const tether::error& e) {
    CHECK(e.code() == tether::errc::invalid_argument);
    CHECK(std::string(e.what()).rfind("tether::context_key:", 0) == 0);
  }
}

TEST_CASE("the empty context has no values, is never revoked, and its stop token cannot stop") {
  const tether::context empty;
  CHECK(empty.empty());
  CHECK(empty.get(session_key) == nullptr);
  CHECK(empty.get(user_key) == nullptr);
  CHECK_FALSE(empty.revoked());
  CHECK_FALSE(empty.stop_token().stop_possible());
  CHECK(tether::context::current().empty());
}

TEST_CASE("with makes a new snapshot and never changes what holders of the old one see") {
  const tether::context first = tether::context{}.with(session_key, 1).with(user_key, "ada");
  const tether::context copy = first;
  const tether::context second = first.with(session_key, 2);
  CHECK(*first.get(session_key) == 1);
  CHECK(*copy.get(session_key) == 1);
  CHECK(*second.get(session_key) == 2);
  CHECK(*second.get(user_key) == "ada");  // the other keys carry over
  CHECK(first.get(task_key) == nullptr);
  const std::string* before = first.get(user_key);
  const tether::context third = first.with(user_key, "bob");
  CHECK(first.get(user_key) == before);
  CHECK(*before == "ada");
  CHECK(*third.get(user_key) == "bob");
}

TEST_CASE("keys are told apart by identity, not by name, and copies of a key are the same key") {
  const tether::context_key<int> a{"same"};
  const tether::context_key<int> b{"same"};
  const tether::context_key<int> a_copy = a;
  const tether::context ctx = tether::context{}.with(a, 1);
  CHECK(*ctx.get(a) == 1);
  CHECK(*ctx.get(a_copy) == 1);
  CHECK(ctx.get(b) == nullptr);
  CHECK(*ctx.with(a_copy, 5).get(a) == 5);
}

TEST_CASE("context_scope installs a context, scopes nest, and each restores exactly what was current") {
  const tether::context outer = tether::context{}.with(session_key, 1);
  const tether::context inner = outer.with(session_key, 2);
  {
    tether::context_scope s1(outer);
    CHECK(*tether::context::current().get(session_key) == 1);
    {
      tether::context_scope s2(inner);
      CHECK(*tether::context::current().get(session_key) == 2);
      {
        tether::context_scope s3{tether::context{}};
        CHECK(tether::context::current().empty());
      }
      CHECK(*tether::context::current().get(session_key) == 2);
    }
    CHECK(*tether::context::current().get(session_key) == 1);
    try {
      tether::context_scope s4(inner);
      throw std::runtime_error("unwind");
    } catch (const std::runtime_error&) {
    }
    CHECK(*tether::context::current().get(session_key) == 1);
  }
  CHECK(tether::context::current().empty());
}

TEST_CASE("invoke_in installs the context for one call and restores the previous one, also on a throw") {
  const tether::context ctx = tether::context{}.with(session_key, 7);
  const int seen = tether::detail::invoke_in(ctx, [](int add) { return *tether::context::current().get(session_key) + add; }, 1);
  CHECK(seen == 8);
  CHECK(tether::context::current().empty());
  CHECK_THROWS_AS(tether::detail::invoke_in(ctx, [] { throw std::logic_error("x"); }), std::logic_error);
  CHECK(tether::context::current().empty());
  tether::context taken = ctx;
  CHECK(tether::detail::invoke_in(std::move(taken), [] { return *tether::context::current().get(session_key); }) == 7);
  CHECK(taken.empty());  // the rvalue form takes the caller's reference over
  CHECK(tether::context::current().empty());
  CHECK_THROWS_AS(tether::detail::invoke_in(tether::context(ctx), [] { throw std::logic_error("x"); }),
                  std::logic_error);
  CHECK(tether::context::current().empty());
  CHECK(*ctx.get(session_key) == 7);
}

TEST_CASE("exchange_current swaps the installed context and hands back the previous one") {
  const tether::context ctx = tether::context{}.with(session_key, 3);
  tether::context previous = tether::detail::exchange_current(ctx);
  CHECK(previous.empty());
  CHECK(*tether::context::current().get(session_key) == 3);
  tether::context mine = tether::detail::exchange_current(std::move(previous));
  CHECK(*mine.get(session_key) == 3);
  CHECK(tether::context::current().empty());
}

TEST_CASE("bind runs the function under the context current at bind, on any thread") {
  std::function<std::string(int)> task;
  {
    tether::context_scope scope(tether::context{}.with(user_key, "ada"));
    task = tether::bind([](int n) { return user_of(tether::context::current()) + std::to_string(n); });
  }
  CHECK(task(1) == "ada1");  // the caller's empty context does not matter
  CHECK(tether::context::current().empty());
  std::string on_thread;
  bool thread_empty_after = false;
  std::thread worker([&] {
    on_thread = task(2);
    thread_empty_after = tether::context::current().empty();
  });
  worker.join();
  CHECK(on_thread == "ada2");
  CHECK(thread_empty_after);
}

TEST_CASE("bind takes an explicit context, move-only functions, and runs rvalue calls") {
  auto owned = std::make_unique<int>(41);
  auto task = tether::bind(tether::context{}.with(session_key, 1),
                           [p = std::move(owned)]() mutable { return *p + *tether::context::current().get(session_key); });
  CHECK(*task.captured().get(session_key) == 1);
  CHECK(task() == 42);
  CHECK(std::move(task)() == 42);
  CHECK(tether::context::current().empty());
}

TEST_CASE("revoking a lifetime revokes every attached context and every context derived from them") {
  tether::lifetime session("session-42");
  const tether::context base = tether::context{}.with(user_key, "ada").with(session_key, 42);
  const tether::context attached = session.attach(base);
  const tether::context derived = attached.with(task_key, 1);
  std::atomic<int> callbacks{0};
  std::stop_callback on_stop(derived.stop_token(), [&] { ++callbacks; });
  CHECK_FALSE(attached.revoked());
  CHECK(*derived.get(user_key) == "ada");
  session.revoke();
  CHECK(session.revoked());
  CHECK(attached.revoked());
  CHECK(derived.revoked());
  CHECK(attached.with(task_key, 2).revoked());
  CHECK(derived.stop_token().stop_requested());
  CHECK(callbacks == 1);
  CHECK_FALSE(base.revoked());  // the snapshot that was attached is not owned by the lifetime
  CHECK(*base.get(user_key) == "ada");
  CHECK(*derived.get(session_key) == 42);  // non-sensitive keys stay readable
  CHECK(*derived.get(task_key) == 1);
}

TEST_CASE("reading a sensitive key of a revoked context throws context_revoked naming the key and the lifetime") {
  tether::lifetime session("session-7");
  const tether::context ctx = session.attach(tether::context{}.with(user_key, "ada"));
  const tether::context_key<int> unset_secret{"pin", true};
  session.revoke();
  for (const char* key : {"user", "pin"}) {
    try {
      if (std::string(key) == "user") (void)ctx.get(user_key);
      else (void)ctx.get(unset_secret);  // unset or not: a revoked sensitive key is never readable
      FAIL("a revoked sensitive key was readable");
    } catch (const tether::error& e) {
      CHECK(e.code() == tether::errc::context_revoked);
      const std::string what = e.what();
      CHECK(what.rfind("tether::context::get: key '" + std::string(key) + "'", 0) == 0);
      CHECK(what.find("'session-7'") != std::string::npos);
    }
  }
}

TEST_CASE("attach on a revoked lifetime returns an already revoked context; destroying a lifetime revokes") {
  tether::context kept;
  {
    tether::lifetime session("gone");
    session.revoke();
    CHECK(session.attach(tether::context{}).revoked());
    tether::lifetime other("dropped");
    kept = other.attach(tether::context{}.with(user_key, "ada"));
  }
  CHECK(kept.revoked());
  CHECK_THROWS_AS((void)kept.get(user_key), tether::error);
}

TEST_CASE("attach captures the current context by default") {
  tether::lifetime session("s");
  tether::context_scope scope(tether::context{}.with(session_key, 9));
  const tether::context ctx = session.attach();
  CHECK(*ctx.get(session_key) == 9);
  CHECK_FALSE(tether::context::current().revoked());
}

TEST_CASE("a moved lifetime keeps its contexts; move assignment revokes the target's; a moved-from one refuses attach") {
  tether::lifetime a("a");
  const tether::context from_a = a.attach(tether::context{});
  tether::lifetime b(std::move(a));
  CHECK_FALSE(from_a.revoked());
  CHECK(b.name() == "a");
  tether::lifetime c("c");
  const tether::context from_c = c.attach(tether::context{});
  c = std::move(b);
  CHECK(from_c.revoked());
  CHECK_FALSE(from_a.revoked());
  CHECK(a.revoked());
  try {
    (void)a.attach(tether::context{});
    FAIL("a moved-from lifetime attached a context");
  } catch (const tether::error& e) {
    CHECK(e.code() == tether::errc::invalid_argument);
    CHECK(std::string(e.what()).rfind("tether::lifetime::attach:", 0) == 0);
  }
  c.revoke();
  CHECK(from_a.revoked());
}

TEST_CASE("a context attached to two lifetimes is revoked by either, and the message names the one revoked") {
  for (int revoke_outer = 0; revoke_outer < 2; ++revoke_outer) {
    tether::lifetime session("session");
    tether::lifetime request("request");
    const tether::context in_session = session.attach(tether::context{}.with(user_key, "ada"));
    const tether::context in_both = request.attach(in_session);
    CHECK(session.attach(in_both).stop_token() == in_both.stop_token());  // already attached there: same state
    (revoke_outer ? session : request).revoke();
    CHECK(in_both.revoked());
    CHECK(in_session.revoked() == (revoke_outer == 1));
    try {
      (void)in_both.get(user_key);
      FAIL("a revoked sensitive key was readable");
    } catch (const tether::error& e) {
      CHECK(std::string(e.what()).find(revoke_outer ? "'session'" : "'request'") != std::string::npos);
    }
  }
}

TEST_CASE("capture, install and restore allocate nothing; with allocates" * doctest::timeout(10)) {
  tether::lifetime session("alloc");
  const tether::context ctx = session.attach(tether::context{}.with(user_key, "ada").with(session_key, 1));
  int sum = 0;
  const std::size_t before = allocations;
  {
    tether::context_scope scope(ctx);
    const tether::context current = tether::context::current();
    const tether::context copy = current;
    sum += *copy.get(session_key) + static_cast<int>(copy.get(user_key)->size());
    sum += copy.revoked() ? 1 : 0;
    sum += copy.stop_token().stop_requested() ? 1 : 0;
    auto task = tether::bind([&sum] { sum += *tether::context::current().get(session_key); });
    tether::context previous = tether::detail::exchange_current(tether::context{});
    task();
    tether::detail::exchange_current(std::move(previous));
    tether::detail::invoke_in(ctx, [&sum] { ++sum; });
    tether::context captured = tether::context::current();
    tether::detail::invoke_in(std::move(captured), [&sum] { ++sum; });
  }
  tether::detail::run_captured(tether::bind(ctx, [&sum] { sum += *tether::context::current().get(session_key); }),
                               "allocation test");
  const std::size_t after = allocations;
  CHECK(after == before);
  CHECK(sum == 8);
  const tether::context bigger = ctx.with(task_key, 1);
  CHECK(allocations > after);
}

TEST_CASE("run_captured runs the task under its context and leaves the worker empty, also on a throw") {
  auto task = tether::detail::capture([] { return 1; });
  CHECK(tether::detail::run_captured(task, "test worker") == 1);
  tether::context_scope scope(tether::context{}.with(session_key, 5));
  auto throwing = tether::detail::capture([] {
    CHECK(*tether::context::current().get(session_key) == 5);
    throw std::runtime_error("task failed");
  });
  std::thread worker([&] {
    try {
      tether::detail::run_captured(throwing, "test worker");
    } catch (const std::runtime_error&) {
    }
    CHECK(tether::context::current().empty());
  });
  worker.join();
}

namespace {

/// Runs `fn` in a forked child with stderr captured; returns the child's stderr and sets `aborted`.
std::string in_child(void (*fn)(), bool& aborted) {
  int pipe_fds[2];
  REQUIRE(::pipe(pipe_fds) == 0);
  std::fflush(nullptr);  // or the child inherits unwritten output and may write it a second time
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    std::signal(SIGABRT, SIG_DFL);  // doctest's crash handler would report the expected abort as a failure
    ::dup2(pipe_fds[1], 2);
    fn();
    std::_Exit(0);
  }
  ::close(pipe_fds[1]);
  std::string text;
  char buffer[512];
  for (ssize_t n; (n = ::read(pipe_fds[0], buffer, sizeof buffer)) > 0;) text.append(buffer, static_cast<size_t>(n));
  ::close(pipe_fds[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  aborted = WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT;
  return text;
}

void leave_context_behind() {
  tether::detail::run_captured([] { (void)tether::detail::exchange_current(tether::context{}.with(task_key, 1)); },
                               "worker-3");
  // Release builds get here: run_captured dropped the leftover, so the next task starts empty.
  if (!tether::context::current().empty()) std::_Exit(2);
}

void replace_inside_scope() {
  tether::context_scope scope(tether::context{}.with(session_key, 1));
  (void)tether::detail::exchange_current(tether::context{});
}

}  // namespace

TEST_CASE("a context left behind on a worker or inside a scope aborts debug builds with a message" *
          doctest::timeout(30)) {
  bool aborted = false, scope_aborted = false;
  const std::string text = in_child(leave_context_behind, aborted);
  const std::string scope_text = in_child(replace_inside_scope, scope_aborted);
#ifdef NDEBUG
  CHECK_FALSE(aborted);
  CHECK_FALSE(scope_aborted);
  CHECK(text.empty());
#else
  CHECK(aborted);
  CHECK(scope_aborted);
  CHECK(text.find("tether: worker-3:") != std::string::npos);
  CHECK(scope_text.find("tether::context_scope::~context_scope:") != std::string::npos);
#endif
}

// ---- fibers ------------------------------------------------------------------------------------------------

namespace {

namespace fibers = boost::fibers;

/// Each fiber's saved context, kept while the fiber is not running.
struct fiber_slot : fibers::fiber_properties {
  using fiber_properties::fiber_properties;
  tether::context saved;
};

/// Round-robin on one thread, swapping the current context on every switch: the hook the task manager uses.
class context_round_robin : public fibers::algo::algorithm_with_properties<fiber_slot> {
public:
  void awakened(fibers::context* fiber, fiber_slot&) noexcept override { fiber->ready_link(ready_); }

  fibers::context* pick_next() noexcept override {
    fibers::context* next = nullptr;
    if (!ready_.empty()) {
      next = &ready_.front();
      ready_.pop_front();
    }
    // Save the leaving fiber's context first, so that next == leaving (a lone yield) restores it unchanged.
    slot_of(fibers::context::active()).saved = tether::detail::exchange_current(tether::context{});
    if (next) tether::detail::exchange_current(std::move(slot_of(next).saved));
    return next;
  }

  bool has_ready_fibers() const noexcept override { return !ready_.empty(); }

  void suspend_until(const std::chrono::steady_clock::time_point& until) noexcept override {
    std::unique_lock lock(mutex_);
    if (until == std::chrono::steady_clock::time_point::max()) cv_.wait(lock, [this] { return notified_; });
    else cv_.wait_until(lock, until, [this] { return notified_; });
    notified_ = false;
  }

  void notify() noexcept override {
    {
      std::lock_guard lock(mutex_);
      notified_ = true;
    }
    cv_.notify_all();
  }

private:
  // The main and dispatcher fibers never pass through awakened() before their first switch: give them a slot.
  fiber_slot& slot_of(fibers::context* fiber) noexcept {
    if (!get_properties(fiber)) set_properties(fiber, new_properties(fiber));
    return properties(fiber);
  }

  fibers::scheduler::ready_queue_type ready_;
  std::mutex mutex_;
  std::condition_variable cv_;
  bool notified_ = false;
};

}  // namespace

TEST_CASE("fiber tasks interleaving on one thread each see their own context at every point" * doctest::timeout(30)) {
  for (int count : {2, 3, 8}) {
    std::vector<int> order;     // which fiber ran each step: shows that they really interleaved
    std::vector<std::string> wrong;
    std::thread thread([&] {
      fibers::use_scheduling_algorithm<context_round_robin>();
      tether::context_scope main_scope(tether::context{}.with(user_key, "main"));
      std::vector<fibers::fiber> running;
      for (int f = 0; f < count; ++f)
        running.emplace_back([&, f] {
          if (!tether::context::current().empty()) wrong.push_back("a new fiber did not start empty");
          tether::context_scope scope(tether::context{}.with(user_key, "fiber" + std::to_string(f)));
          for (int step = 0; step < 20; ++step) {
            order.push_back(f);
            boost::this_fiber::yield();
            if (user_of(tether::context::current()) != "fiber" + std::to_string(f)) wrong.push_back("outer");
            tether::context_scope inner(tether::context::current().with(task_key, step));
            boost::this_fiber::yield();
            const tether::context now = tether::context::current();
            if (user_of(now) != "fiber" + std::to_string(f) || *now.get(task_key) != step) wrong.push_back("inner");
          }
        });
      boost::this_fiber::yield();
      if (user_of(tether::context::current()) != "main") wrong.push_back("main after yield");
      for (auto& fiber : running) fiber.join();
      if (user_of(tether::context::current()) != "main") wrong.push_back("main after join");
    });
    thread.join();
    CHECK(wrong.empty());
    REQUIRE(order.size() == static_cast<std::size_t>(count * 20));
    std::size_t switches = 0;
    for (std::size_t i = 1; i < order.size(); ++i) switches += order[i] != order[i - 1];
    CHECK(switches >= order.size() - 1);  // round-robin: every step was followed by another fiber's
  }
}

// ---- stress ------------------------------------------------------------------------------------------------

namespace {

// Full size under the sanitizers too: the whole stress takes well under a second there.
constexpr int session_count = 200;
constexpr int tasks_per_session = 50;

struct stress_session {
  int number;
  std::string user;
  tether::lifetime life;
  tether::context ctx;
};

std::vector<stress_session> make_sessions() {
  std::vector<stress_session> sessions;
  sessions.reserve(session_count);
  for (int s = 0; s < session_count; ++s) {
    std::string user = "user-" + std::to_string(s);
    tether::lifetime life("session-" + std::to_string(s));
    tether::context ctx = life.attach(tether::context{}.with(session_key, s).with(user_key, user));
    sessions.push_back({s, std::move(user), std::move(life), std::move(ctx)});
  }
  return sessions;
}

struct stress_counts {
  std::atomic<int> ran{0}, wrong{0}, revoked_reads{0}, leaked{0};
};

/// What one task checks: its own session's values and task number, never another's; a revoked read only when
/// the session may have been revoked, and then with the context revoked and its stop token fired.
void check_own(stress_counts& counts, const stress_session& session, int task, bool may_be_revoked) {
  const tether::context ctx = tether::context::current();
  const int* number = ctx.get(session_key);
  const int* task_number = ctx.get(task_key);
  if (!number || *number != session.number || !task_number || *task_number != task) ++counts.wrong;
  try {
    const std::string* user = ctx.get(user_key);
    if (!user || *user != session.user) ++counts.wrong;
  } catch (const tether::error& e) {
    const bool fine = e.code() == tether::errc::context_revoked && may_be_revoked && ctx.revoked() &&
                      ctx.stop_token().stop_requested();
    fine ? ++counts.revoked_reads : ++counts.wrong;
  }
}

/// A plain locked queue standing in for a thread pool that tether does not own: bind carries the context over.
class task_queue {
public:
  void push(std::function<void()> task) {
    {
      std::lock_guard lock(mutex_);
      tasks_.push_back(std::move(task));
    }
    cv_.notify_one();
  }
  std::optional<std::function<void()>> pop() {
    std::unique_lock lock(mutex_);
    cv_.wait(lock, [this] { return closed_ || !tasks_.empty(); });
    if (tasks_.empty()) return std::nullopt;
    auto task = std::move(tasks_.front());
    tasks_.pop_front();
    return task;
  }
  std::optional<std::function<void()>> try_pop() {
    std::lock_guard lock(mutex_);
    if (tasks_.empty()) return std::nullopt;
    auto task = std::move(tasks_.front());
    tasks_.pop_front();
    return task;
  }
  void close() {
    {
      std::lock_guard lock(mutex_);
      closed_ = true;
    }
    cv_.notify_all();
  }

private:
  std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> tasks_;
  bool closed_ = false;
};

/// Submits every task of `session` from inside its context, each with its own task number added.
template <class Body>
void submit_session(task_queue& queue, stress_session& session, Body body) {
  tether::context_scope scope(session.ctx);
  for (int t = 0; t < tasks_per_session; ++t) {
    tether::context_scope per_task(tether::context::current().with(task_key, t));
    queue.push(tether::detail::capture([body, &session, t] { body(session, t); }));
  }
}

}  // namespace

TEST_CASE("stress: sessions' tasks on a thread pool each see their own session, never another's, while half "
          "the sessions are revoked" * doctest::timeout(120)) {
  for (int workers : {1, 2, 4}) {
    CAPTURE(workers);
    std::vector<stress_session> sessions = make_sessions();
    stress_counts counts;
    task_queue queue;
    auto body = [&counts](const stress_session& s, int t) {
      check_own(counts, s, t, s.number % 2 == 1);
      ++counts.ran;
    };
    std::vector<std::thread> pool;
    for (int w = 0; w < workers; ++w)
      pool.emplace_back([&] {
        while (auto task = queue.pop()) {
          tether::detail::run_captured(*task, "context_test pool worker");
          if (!tether::context::current().empty()) ++counts.leaked;
        }
      });
    std::vector<std::thread> submitters;
    for (int k = 0; k < 2; ++k)
      submitters.emplace_back([&, k] {
        for (int s = k; s < session_count; s += 2) {
          submit_session(queue, sessions[s], body);
          if (s % 2 == 1) sessions[s].life.revoke();  // a session ends while its tasks run
        }
      });
    for (auto& t : submitters) t.join();
    queue.close();
    for (auto& t : pool) t.join();
    CHECK(counts.ran == session_count * tasks_per_session);
    CHECK(counts.wrong == 0);
    CHECK(counts.leaked == 0);
    MESSAGE("reads refused after revocation: " << counts.revoked_reads.load());
  }
}

TEST_CASE("stress: sessions' tasks as fibers interleaving on worker threads each see their own session" *
          doctest::timeout(120)) {
  for (int threads : {1, 2}) {
    CAPTURE(threads);
    std::vector<stress_session> sessions = make_sessions();
    stress_counts counts;
    task_queue queue;
    auto body = [&counts](const stress_session& s, int t) {
      check_own(counts, s, t, false);
      boost::this_fiber::yield();
      check_own(counts, s, t, false);
      {
        tether::context_scope nested(tether::context::current().with(user_key, "nested"));
        boost::this_fiber::yield();
        if (user_of(tether::context::current()) != "nested") ++counts.wrong;
      }
      boost::this_fiber::yield();
      check_own(counts, s, t, false);
      ++counts.ran;
    };
    for (auto& session : sessions) submit_session(queue, session, body);
    std::vector<std::thread> pool;
    for (int w = 0; w < threads; ++w)
      pool.emplace_back([&] {
        fibers::use_scheduling_algorithm<context_round_robin>();
        std::vector<fibers::fiber> lanes;  // fibers never leave this thread; the queue is the only shared state
        for (int lane = 0; lane < 8; ++lane)
          lanes.emplace_back([&] {
            while (auto task = queue.try_pop()) tether::detail::run_captured(*task, "context_test fiber lane");
          });
        for (auto& lane : lanes) lane.join();
        if (!tether::context::current().empty()) ++counts.leaked;
      });
    for (auto& t : pool) t.join();
    CHECK(counts.ran == session_count * tasks_per_session);
    CHECK(counts.wrong == 0);
    CHECK(counts.leaked == 0);
  }
}
