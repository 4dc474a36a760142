// SPDX-License-Identifier: BSL-1.0
// tether::affine_executor and main_thread(): ordering, results, reentrancy, deadlock detection, timeouts, shutdown.
#include <tether/affine_executor.hpp>

#include <tether/task_manager.hpp>

#include <doctest/doctest.h>
#include "error_of.hpp"

#include <atomic>
#include <barrier>
#include <chrono>
#include <cstdio>
#include <future>
#include <latch>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <fcntl.h>
#include <poll.h>
#include <sys/wait.h>
#include <unistd.h>

namespace {

using namespace std::chrono_literals;

/// Scales a stress size down under the sanitizers.
constexpr int scaled(int n) { return TETHER_SANITIZED ? (n / 2 > 0 ? n / 2 : 1) : n; }

/// A thread that owns `ex` by running its loop until the executor stops.
class owner_thread {
public:
  explicit owner_thread(tether::affine_executor& ex) : ex_(ex), thread_([this] { ran_ = ex_.run(); }) {}
  ~owner_thread() { stop(); }
  /// Stops the executor and joins; returns how many functions the loop ran.
  std::size_t stop() {
    ex_.stop();
    if (thread_.joinable()) thread_.join();
    return ran_;
  }
  std::size_t join() {
    if (thread_.joinable()) thread_.join();
    return ran_;
  }

private:
  tether::affine_executor& ex_;
  std::size_t ran_ = 0;
  std::thread thread_;
};

using tether_test::error_of;

bool readable(int fd, int timeout_ms) {
  pollfd p{fd, POLLIN, 0};
  return ::poll(&p, 1, timeout_ms) == 1 && (p.revents & POLLIN);
}

const tether::context_key<std::string> user_key("user");

}  // namespace

TEST_CASE("functions from one producer run in the order it posted them, whatever the kind" * doctest::timeout(120)) {
  const int per_producer = scaled(8000);
  for (int producers : {1, 2, 4, 8}) {
    CAPTURE(producers);
    tether::affine_executor ex("fifo");
    std::vector<int> last(static_cast<std::size_t>(producers), -1);  // owner thread only
    int done = 0;                                                     // owner thread only
    std::atomic<int> out_of_order{0}, off_owner{0};
    std::vector<std::thread> threads;
    for (int p = 0; p < producers; ++p)
      threads.emplace_back([&, p] {
        std::vector<std::future<void>> futures;
        for (int i = 0; i < per_producer; ++i) {
          auto step = [&, p, i] {
            if (!ex.on_owner_thread()) ++off_owner;
            if (last[static_cast<std::size_t>(p)] != i - 1) ++out_of_order;
            last[static_cast<std::size_t>(p)] = i;
            ++done;
          };
          if (i % 97 == 0) ex.call(step);
          else if (i % 3 == 0) futures.push_back(ex.submit(step));
          else ex.post(step);
        }
        for (auto& f : futures) f.get();
      });
    const std::size_t ran = ex.run_until([&] { return done == producers * per_producer; });
    for (auto& t : threads) t.join();
    CHECK(ran == static_cast<std::size_t>(producers * per_producer));
    CHECK(out_of_order == 0);
    CHECK(off_owner == 0);
  }
}

TEST_CASE("values and exceptions come back to each of many producers" * doctest::timeout(120)) {
  const int per_producer = scaled(2000);
  for (int producers : {8, 16}) {
    CAPTURE(producers);
    tether::affine_executor ex("results");
    owner_thread owner(ex);
    std::atomic<int> wrong{0}, thrown{0};
    std::vector<std::thread> threads;
    for (int p = 0; p < producers; ++p)
      threads.emplace_back([&, p] {
        for (int i = 0; i < per_producer; ++i) {
          const int expected = p * 100000 + i;
          auto fn = [&ex, expected]() -> int {
            if (!ex.on_owner_thread()) return -1;
            if (expected % 5 == 0) throw std::runtime_error("boom " + std::to_string(expected));
            return expected;
          };
          try {
            const int got = i % 2 ? ex.call(fn) : ex.submit(fn).get();
            if (got != expected || expected % 5 == 0) ++wrong;
          } catch (const std::runtime_error& e) {
            if (expected % 5 != 0 || e.what() != "boom " + std::to_string(expected)) ++wrong;
            ++thrown;
          }
        }
      });
    for (auto& t : threads) t.join();
    CHECK(wrong == 0);
    CHECK(thrown > 0);
    CHECK(owner.stop() == static_cast<std::size_t>(producers * per_producer));
  }
}

TEST_CASE("call on the owner thread runs inline, also from inside a running function") {
  tether::affine_executor ex("inline");
  CHECK_FALSE(ex.on_owner_thread());  // strict: nobody owns it before a run*/poll
  CHECK(ex.poll() == 0);              // claims it for this thread
  CHECK(ex.on_owner_thread());

  int calls = 0;
  CHECK(ex.call([&] { return ++calls; }) == 1);  // no loop needed: inline
  CHECK_THROWS_AS(ex.call([]() -> int { throw std::logic_error("inline"); }), std::logic_error);

  std::optional<int> nested;
  ex.post([&] { nested = ex.call([&] { return ex.call([] { return 40; }) + 2; }); });
  CHECK(ex.poll() == 1);
  CHECK(nested == 42);

  // submit never runs inline, even on the owner thread: the future is ready only once the loop ran it.
  auto later = ex.submit([] { return 7; });
  CHECK(later.wait_for(0s) == std::future_status::timeout);
  CHECK(ex.run_one() == 1);
  CHECK(later.get() == 7);

  std::thread other([&] {
    CHECK_FALSE(ex.on_owner_thread());
    CHECK(error_of([&] { ex.poll(); }) == tether::errc::invalid_argument);
  });
  other.join();
}

TEST_CASE("nothing runs before the owner runs the loop, and posting never runs anything inline") {
  tether::affine_executor ex("not-yet");
  std::atomic<int> ran{0};
  std::thread producer([&] {
    for (int i = 0; i < 100; ++i) ex.post([&] { ++ran; });
  });
  producer.join();
  ex.post([&] { ++ran; });  // from the future owner, before it owns anything
  CHECK(ran == 0);
  CHECK(ex.poll() == 101);
  CHECK(ran == 101);
}

TEST_CASE("two owners calling into each other at the same moment: exactly one gets would_deadlock" *
          doctest::timeout(120)) {
  const int rounds = scaled(400);
  tether::affine_executor a("alpha"), b("beta");
  owner_thread owner_a(a), owner_b(b);
  int one_thrower = 0;
  for (int round = 0; round < rounds; ++round) {
    std::barrier both(2);
    std::latch finished(2);
    std::atomic<int> deadlocks{0}, completed{0}, bad_message{0};
    auto cross = [&](tether::affine_executor& into) {
      return [&] {
        both.arrive_and_wait();  // neither owner is in its loop now: each call waits on the other
        try {
          into.call([&] { return into.on_owner_thread(); }) ? ++completed : ++bad_message;
        } catch (const tether::error& e) {
          if (e.code() == tether::errc::would_deadlock) ++deadlocks;
          const std::string what = e.what();
          if (what.find("'alpha'") == std::string::npos || what.find("'beta'") == std::string::npos ||
              what.rfind("tether::affine_executor::call: ", 0) != 0)
            ++bad_message;
        }
        finished.count_down();
      };
    };
    a.post(cross(b));
    b.post(cross(a));
    finished.wait();
    CHECK(bad_message == 0);
    if (deadlocks == 1 && completed == 1) ++one_thrower;
  }
  CHECK(one_thrower == rounds);
}

TEST_CASE("a cycle through three owners is found, and call_for is checked as well" * doctest::timeout(60)) {
  tether::affine_executor a("a"), b("b"), c("c");
  owner_thread oa(a), ob(b), oc(c);
  for (int round = 0; round < scaled(100); ++round) {
    std::barrier all(3);
    std::latch finished(3);
    std::atomic<int> deadlocks{0}, completed{0};
    auto cross = [&](tether::affine_executor& into, bool timed) {
      return [&, timed] {
        all.arrive_and_wait();
        const auto code = error_of([&] { timed ? into.call_for(1h, [] {}) : into.call([] {}); });
        if (code == tether::errc::would_deadlock) ++deadlocks;
        else if (!code) ++completed;
        finished.count_down();
      };
    };
    a.post(cross(b, round % 2 == 0));
    b.post(cross(c, false));
    c.post(cross(a, round % 3 == 0));
    finished.wait();
    CHECK(deadlocks == 1);
    CHECK(completed == 2);
  }
}

TEST_CASE("a call_for that timed out never starts later") {
  tether::affine_executor ex("busy");
  owner_thread owner(ex);
  std::latch gate(1);
  ex.post([&] { gate.wait(); });  // keeps the owner busy until we let it go
  std::atomic<bool> ran{false};
  try {
    ex.call_for(1ms, [&] { ran = true; });
    FAIL("call_for returned while the owner was busy");
  } catch (const tether::error& e) {
    CHECK(e.code() == tether::errc::timeout);
    CHECK(std::string(e.what()).rfind("tether::affine_executor::call_for: executor 'busy'", 0) == 0);
  }
  gate.count_down();
  ex.call([] {});  // FIFO per producer: the withdrawn call was taken (and skipped) before this one
  CHECK_FALSE(ran);
  CHECK(owner.stop() == 2);  // the gate and the last call; the withdrawn one does not count
}

TEST_CASE("a call that started before its timeout is waited for to the end") {
  tether::affine_executor ex("slow");
  owner_thread owner(ex);
  const auto timeout = 20ms;
  const auto begin = std::chrono::steady_clock::now();
  std::atomic<bool> started{false};
  try {
    const int got = ex.call_for(timeout, [&] {
      started = true;
      // Outlive the caller's deadline, so the caller has to see that we started.
      while (std::chrono::steady_clock::now() < begin + 2 * timeout) std::this_thread::yield();
      return 7;
    });
    CHECK(got == 7);
    CHECK(std::chrono::steady_clock::now() >= begin + 2 * timeout);
  } catch (const tether::error& e) {
    // The owner did not even start within the timeout (an overloaded machine): then it must never start.
    CHECK(e.code() == tether::errc::timeout);
    ex.call([] {});
    CHECK_FALSE(started);
  }
}

TEST_CASE("call_for under stress: every call either returns after running once or times out never having run" *
          doctest::timeout(120)) {
  const int per_thread = scaled(4000);
  for (int callers : {1, 4}) {
    CAPTURE(callers);
    tether::affine_executor ex("stress");
    owner_thread owner(ex);
    std::atomic<int> inconsistent{0}, timed_out{0}, returned{0}, runs{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < callers; ++t)
      threads.emplace_back([&, t] {
        const std::chrono::nanoseconds timeouts[] = {0ns, 1us, 20us, 1ms};
        for (int i = 0; i < per_thread; ++i) {
          auto mine = std::make_shared<std::atomic<int>>(0);  // outlives a withdrawn call
          try {
            const int got = ex.call_for(timeouts[(i + t) % 4], [mine, &runs] {
              ++runs;
              return ++*mine;
            });
            ++returned;
            if (got != 1 || *mine != 1) ++inconsistent;
          } catch (const tether::error& e) {
            ++timed_out;
            if (e.code() != tether::errc::timeout) ++inconsistent;
            ex.call([] {});  // flushes this thread's earlier calls through the owner
            if (*mine != 0) ++inconsistent;
          }
        }
      });
    for (auto& t : threads) t.join();
    CHECK(inconsistent == 0);
    CHECK(runs == returned);
    CHECK(returned + timed_out == callers * per_thread);
  }
}

namespace {

/// 32 producers keep posting, submitting and calling until the executor refuses; the main thread stops or drains
/// it while they are at it. Checks that every waiter is answered and that everything ran on the owner thread.
void race_shutdown(bool drain) {
  const int producers = 32;
  tether::affine_executor ex(drain ? "draining" : "stopping");
  std::atomic<int> off_owner{0}, ran{0}, posts_accepted{0}, posts_ran{0}, bad{0}, abandoned{0};
  std::promise<void> warmed_up;
  std::atomic<bool> warm_signalled{false};
  owner_thread owner(ex);
  std::vector<std::thread> threads;
  std::vector<std::vector<std::future<int>>> futures(producers);
  for (int p = 0; p < producers; ++p)
    threads.emplace_back([&, p] {
      auto body = [&] {
        if (!ex.on_owner_thread()) ++off_owner;
        if (++ran == 2000 && !warm_signalled.exchange(true)) warmed_up.set_value();
        return 1;
      };
      for (int i = 0;; ++i) {
        try {
          if (i % 3 == 0) {
            ex.post([&, body] {
              body();
              ++posts_ran;
            });
            ++posts_accepted;
          } else if (i % 3 == 1) {
            futures[static_cast<std::size_t>(p)].push_back(ex.submit(body));
          } else if (ex.call(body) != 1) {
            ++bad;
          }
        } catch (const tether::error& e) {
          if (e.code() == tether::errc::executor_stopped) return;
          if (e.code() == tether::errc::abandoned && !drain) ++abandoned;
          else ++bad;
        }
      }
    });
  warmed_up.get_future().wait();
  drain ? ex.drain() : ex.stop();
  for (auto& t : threads) t.join();
  owner.join();
  CHECK(ex.stopped());
  for (auto& list : futures)
    for (auto& f : list) {
      REQUIRE(f.wait_for(0s) == std::future_status::ready);  // every future is resolved, none hangs
      int got = 0;
      const auto code = error_of([&] { got = f.get(); });
      if (code == tether::errc::abandoned && !drain) ++abandoned;
      else if (code || got != 1) ++bad;
    }
  CHECK(bad == 0);
  CHECK(off_owner == 0);
  if (drain) CHECK(posts_ran == posts_accepted);  // drain runs the whole backlog
  else CHECK(posts_ran <= posts_accepted);
}

}  // namespace

TEST_CASE("stop while 32 producers race it: every waiter is answered, nothing runs off the owner thread" *
          doctest::timeout(120)) {
  for (int round = 0; round < scaled(8); ++round) race_shutdown(false);
}

TEST_CASE("drain while 32 producers race it: everything accepted runs, later work is refused" *
          doctest::timeout(120)) {
  for (int round = 0; round < scaled(8); ++round) race_shutdown(true);
}

TEST_CASE("after stop, new work is refused with executor_stopped, naming the executor") {
  tether::affine_executor ex("closed");
  ex.stop();
  ex.stop();  // idempotent
  CHECK(ex.stopped());
  CHECK(error_of([&] { ex.post([] {}); }) == tether::errc::executor_stopped);
  CHECK(error_of([&] { (void)ex.submit([] {}); }) == tether::errc::executor_stopped);
  CHECK(error_of([&] { ex.call([] {}); }) == tether::errc::executor_stopped);
  try {
    ex.call_for(1s, [] {});
    FAIL("call_for was accepted after stop");
  } catch (const tether::error& e) {
    CHECK(std::string(e.what()).rfind("tether::affine_executor::call_for: executor 'closed' is stopped", 0) == 0);
  }
  CHECK(ex.run() == 0);
  CHECK(ex.poll() == 0);
  CHECK(error_of([&] { ex.call([] {}); }) == tether::errc::executor_stopped);  // also inline on the owner
  CHECK_THROWS_AS(tether::affine_executor(""), tether::error);
}

TEST_CASE("stop abandons pending functions: futures and callers get abandoned, posted ones never run") {
  tether::affine_executor ex("abandoning");
  const int fd = ex.wakeup_fd();
  std::atomic<int> ran{0};
  std::thread caller([&] {
    try {
      ex.call([&] { ++ran; });
      FAIL("the call returned after stop");
    } catch (const tether::error& e) {
      CHECK(e.code() == tether::errc::abandoned);
      CHECK(std::string(e.what()).find("'abandoning'") != std::string::npos);
    }
  });
  // The fd turns readable once the first function is accepted: the call is queued, its caller waits.
  while (!readable(fd, 1000)) {
  }
  ex.post([&] { ++ran; });
  auto future = ex.submit([&] { return ++ran; });
  ex.stop();
  caller.join();
  CHECK(error_of([&] { future.get(); }) == tether::errc::abandoned);
  CHECK(ex.poll() == 0);
  CHECK(ran == 0);
}

TEST_CASE("drain on the owner thread runs the backlog before it returns") {
  tether::affine_executor ex("drain-here");
  CHECK(ex.poll() == 0);
  int ran = 0;
  for (int i = 0; i < 10; ++i) ex.post([&] { ++ran; });
  ex.drain();
  CHECK(ran == 10);
  CHECK(ex.stopped());
  CHECK(error_of([&] { ex.post([] {}); }) == tether::errc::executor_stopped);
}

TEST_CASE("destroying an executor answers callers blocked on it with abandoned, and runs nothing" *
          doctest::timeout(30)) {
  for (int round = 0; round < scaled(50); ++round) {
    auto ex = std::make_unique<tether::affine_executor>("doomed");
    const int fd = ::dup(ex->wakeup_fd());  // our own copy: the executor closes its fd
    std::atomic<bool> ran{false};
    std::optional<tether::errc> outcome;
    tether::affine_executor* const target = ex.get();
    std::thread caller([&] { outcome = error_of([&] { target->call([&] { ran = true; }); }); });
    // Readable: the call is accepted (the caller is past the point where it could still be refused).
    while (!readable(fd, 1000)) {
    }
    ex.reset();
    caller.join();
    ::close(fd);
    CHECK(outcome == tether::errc::abandoned);
    CHECK_FALSE(ran);
  }
}

TEST_CASE("wakeup_fd is readable exactly while work is pending, and drives the executor from poll(2)" *
          doctest::timeout(60)) {
  tether::affine_executor ex("fd");
  const int fd = ex.wakeup_fd();
  REQUIRE(fd >= 0);
  CHECK(ex.wakeup_fd() == fd);
  CHECK_FALSE(readable(fd, 0));
  ex.post([] {});
  CHECK(readable(fd, 0));
  CHECK(ex.poll() == 1);
  CHECK_FALSE(readable(fd, 0));

  // Another loop's view: wait for POLLIN, then poll(), with several producers; a lost wake-up would hang here.
  const int per_producer = scaled(5000);
  for (int producers : {1, 2, 4}) {
    CAPTURE(producers);
    int done = 0;
    std::vector<std::thread> threads;
    for (int p = 0; p < producers; ++p)
      threads.emplace_back([&] {
        for (int i = 0; i < per_producer; ++i) ex.post([&] { ++done; });
      });
    while (done < producers * per_producer) {
      if (readable(fd, -1)) ex.poll();
    }
    for (auto& t : threads) t.join();
    CHECK(ex.poll() == 0);
    CHECK_FALSE(readable(fd, 0));
  }
  std::thread stopper([&] { ex.stop(); });
  stopper.join();
  CHECK(readable(fd, 0));  // stop() wakes a loop that waits on the fd
  CHECK(ex.poll() == 0);
  CHECK(ex.stopped());
}

TEST_CASE("wakeup_fd asked for while work is already pending is readable at once") {
  tether::affine_executor ex("late-fd");
  std::thread producer([&] { ex.post([] {}); });
  producer.join();
  CHECK(readable(ex.wakeup_fd(), 0));
  CHECK(ex.poll() == 1);
}

TEST_CASE("a drain from another thread always wakes a loop that waits on wakeup_fd" * doctest::timeout(120)) {
  // Regression: the loop's poll() could consume drain()'s signal on leaving and signal nothing itself, so a loop
  // that then waited on the fd waited forever while the executor stayed "draining".
  const int rounds = scaled(1000);
  for (int round = 0; round < rounds; ++round) {
    tether::affine_executor ex("fd-drain");
    const int fd = ex.wakeup_fd();
    std::atomic<bool> drained{false};
    std::latch owning(1);
    bool waited_in_vain = false;
    std::thread owner([&] {
      ex.poll();  // claims it
      owning.count_down();
      for (;;) {
        ex.poll();
        if (ex.stopped()) return;
        if (!drained.load()) continue;  // keeps the owner inside poll() while drain() comes
        // A correct executor is readable here at once; 10 s only guards against hanging the suite.
        if (!readable(fd, 10'000) && !ex.stopped()) {
          waited_in_vain = true;
          return;
        }
      }
    });
    owning.wait();
    for (int spin = round % 97; spin > 0; --spin) tether::detail::spin_pause();  // varies where drain() lands
    ex.drain();
    drained = true;
    owner.join();
    if (waited_in_vain) {
      FAIL_CHECK("round " << round << ": the loop waited on a clear fd while the executor was draining");
      break;
    }
  }
}

TEST_CASE("work that a nested loop brought in but left behind keeps wakeup_fd readable") {
  tether::affine_executor ex("nested-fd");
  const int fd = ex.wakeup_fd();
  std::vector<int> order;
  ex.post([&] {
    order.push_back(1);
    ex.post([&] { order.push_back(2); });
    ex.post([&] { order.push_back(3); });
    CHECK(ex.run_one() == 1);  // takes in both, runs the first
  });
  CHECK(ex.poll() == 1);       // the first; the nested run_one counts the second as its own
  CHECK(readable(fd, 0));      // the third is still pending: a loop that waits on the fd must come back for it
  CHECK(ex.poll() == 1);
  CHECK(order == std::vector<int>{1, 2, 3});
  CHECK_FALSE(readable(fd, 0));
}

TEST_CASE("stop answers at once the waiters whose functions the owner took in while it runs a long function" *
          doctest::timeout(30)) {
  tether::affine_executor ex("long-function");
  std::latch started(1), release(1);
  std::atomic<bool> later_ran{false};
  ex.post([&] {
    started.count_down();
    release.wait();
  });
  auto later = ex.submit([&] { later_ran = true; });  // both are pending before the owner first looks
  std::thread owner([&] { ex.run(); });
  started.wait();
  // The owner is in the first function, with the second taken in behind it. stop() must not leave that waiter to
  // the owner, which is stuck until we release it: get() would hang here.
  ex.stop();
  CHECK(error_of([&] { later.get(); }) == tether::errc::abandoned);
  release.count_down();
  owner.join();
  CHECK_FALSE(later_ran);
}

TEST_CASE("each function runs under its submitter's context, and the owner's own context is restored") {
  tether::affine_executor ex("context");
  tether::context_scope owner_scope(tether::context{}.with(user_key, "owner"));
  CHECK(ex.poll() == 0);
  std::vector<std::thread> threads;
  std::atomic<int> wrong{0};
  std::vector<std::string> seen_by_post;  // owner thread only
  std::latch done(8);
  for (int p = 0; p < 8; ++p)
    threads.emplace_back([&, p] {
      const std::string me = "user-" + std::to_string(p);
      tether::context_scope as_user(tether::context{}.with(user_key, me));
      if (ex.call([] { return *tether::context::current().get(user_key); }) != me) ++wrong;
      if (ex.submit([] { return *tether::context::current().get(user_key); }).get() != me) ++wrong;
      ex.post([&] {
        seen_by_post.push_back(*tether::context::current().get(user_key));
        done.count_down();
      });
    });
  ex.run_until([&] { return done.try_wait(); });
  for (auto& t : threads) t.join();
  CHECK(wrong == 0);
  CHECK(seen_by_post.size() == 8);
  CHECK(*tether::context::current().get(user_key) == "owner");
  CHECK(ex.call([] { return *tether::context::current().get(user_key); }) == "owner");  // inline: the caller's
}

TEST_CASE("exceptions escaping posted functions go to the error handler, on the owner thread") {
  tether::affine_executor ex("handled");
  CHECK(ex.poll() == 0);
  std::vector<std::string> caught;
  bool on_owner = true;
  ex.set_error_handler([&](std::exception_ptr e) {
    on_owner = on_owner && ex.on_owner_thread();
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& x) {
      caught.emplace_back(x.what());
    }
  });
  std::thread producer([&] {
    ex.post([] { throw std::runtime_error("first"); });
    ex.post([] {});
    ex.post([] { throw std::runtime_error("second"); });
  });
  producer.join();
  CHECK(ex.poll() == 3);  // the loop goes on after each
  CHECK(caught == std::vector<std::string>{"first", "second"});
  CHECK(on_owner);

  ex.set_error_handler([](std::exception_ptr) { throw std::logic_error("a handler that throws"); });
  ex.post([] { throw 1; });
  ex.post([] {});
  CHECK(ex.poll() == 2);  // a throwing handler does not break the loop either
}

TEST_CASE("without a handler, an escaping exception is reported on stderr with the executor's name") {
  tether::affine_executor ex("reporter");
  ex.post([] { throw std::runtime_error("lost nowhere"); });
  std::fflush(stderr);
  char path[] = "/tmp/tether-affine-stderr-XXXXXX";
  const int file = ::mkstemp(path);
  REQUIRE(file >= 0);
  const int saved = ::dup(2);
  ::dup2(file, 2);
  const std::size_t ran = ex.poll();
  std::fflush(stderr);
  ::dup2(saved, 2);
  ::close(saved);
  std::string text(512, '\0');
  text.resize(static_cast<std::size_t>(::pread(file, text.data(), text.size(), 0)));
  ::close(file);
  ::unlink(path);
  CHECK(ran == 1);
  CHECK(text.find("'reporter'") != std::string::npos);
  CHECK(text.find("lost nowhere") != std::string::npos);
}

TEST_CASE("run_one, run_for, run_until and poll each run what they promise") {
  tether::affine_executor ex("loops");
  int ran = 0;
  ex.post([&] {
    ++ran;
    ex.post([&] { ++ran; });  // posted while poll() runs: left for the next round
  });
  CHECK(ex.poll() == 1);
  CHECK(ran == 1);
  CHECK(ex.poll() == 1);
  CHECK(ran == 2);

  CHECK(ex.run_for(1ms) == 0);  // nothing to do: returns when the time is up
  std::thread producer([&] { ex.post([&] { ++ran; }); });
  CHECK(ex.run_one() == 1);
  producer.join();
  CHECK(ran == 3);

  // run_until notices a condition that turns true without any post.
  std::atomic<bool> flag{false};
  std::thread setter([&] { flag = true; });
  CHECK(ex.run_until([&] { return flag.load(); }) == 0);
  setter.join();
  CHECK(ex.run_until([] { return true; }) == 0);  // checked before the first function

  ex.post([&] { ex.stop(); });
  ex.post([&] { ++ran; });
  CHECK(ex.run() == 1);  // stop() from inside: the loop returns, the rest is abandoned
  CHECK(ran == 3);
  CHECK(ex.run_one() == 0);
}

TEST_CASE("a nested loop inside a running function serves the queue, and the outer loop goes on") {
  tether::affine_executor ex("nested");
  owner_thread owner(ex);
  std::atomic<bool> inner_done{false};
  std::promise<int> inner_ran;
  ex.post([&] {
    // A modal loop, like a dialog's: it serves calls until its own condition holds.
    inner_ran.set_value(static_cast<int>(ex.run_until([&] { return inner_done.load(); })));
  });
  CHECK(ex.call([&] {
    inner_done = true;
    return 5;
  }) == 5);
  CHECK(inner_ran.get_future().get() == 1);
  CHECK(ex.call([] { return 6; }) == 6);  // the outer run() still serves
}

TEST_CASE("main_thread() is one executor owned by the main thread from the start") {
  tether::affine_executor& main = tether::main_thread();
  CHECK(&main == &tether::main_thread());
  CHECK(main.name() == "main_thread");
  CHECK(main.on_owner_thread());  // doctest runs the tests on the process's main thread
  CHECK(main.call([] { return 3; }) == 3);  // inline before any loop ran

  std::atomic<int> answered{0};
  std::vector<std::thread> sessions;
  for (int s = 0; s < 4; ++s)
    sessions.emplace_back([&] {
      CHECK_FALSE(tether::main_thread().on_owner_thread());
      if (tether::main_thread().call([] { return tether::main_thread().on_owner_thread(); })) ++answered;
    });
  main.run_until([&] { return answered == 4; });
  for (auto& t : sessions) t.join();
  CHECK(answered == 4);

  std::thread intruder([] { CHECK(error_of([] { tether::main_thread().poll(); }) == tether::errc::invalid_argument); });
  intruder.join();
}

TEST_CASE("in the child of a fork() made on another thread, main_thread() belongs to the thread that forked" *
          doctest::skip(TETHER_SANITIZED) * doctest::timeout(60)) {
  // The child has only the thread that forked; the main thread, which owned main_thread(), stayed in the parent. A
  // call on main_thread() in the child must run inline on its one thread, not wait for a thread that is not there
  // (before the fork handler it did, and the alarm ended the child). The executor that thread owned stays its own.
  REQUIRE(tether::main_thread().on_owner_thread());
  int status = -1;
  std::thread([&] {
    tether::affine_executor own("forker");
    own.poll();  // owned by this thread
    const pid_t child = ::fork();
    if (child == 0) {
      ::alarm(10);
      const bool owns_main = tether::main_thread().on_owner_thread();
      const bool answered = tether::main_thread().call([] { return 42; }) == 42;
      const bool owns_own = own.on_owner_thread() && own.call([] { return 7; }) == 7;
      bool newcomer_owns = true;  // a thread the child starts owns neither
      std::thread([&] { newcomer_owns = tether::main_thread().on_owner_thread() || own.on_owner_thread(); }).join();
      ::_exit(owns_main && answered && owns_own && !newcomer_owns ? 0 : 1);
    }
    if (child > 0) ::waitpid(child, &status, 0);  // status stays -1 if either failed
  }).join();
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
  CHECK(tether::main_thread().on_owner_thread());  // the parent's main thread still owns it
}

TEST_CASE("a fork() while owner threads wait on each other leaves the child a usable wait-for graph" *
          doctest::skip(TETHER_SANITIZED) * doctest::timeout(120)) {
  // An owner thread publishes and withdraws each wait under the wait-for graph's lock, so a fork() often comes while
  // it holds that lock. The child's only thread owns main_thread(), so its calls wait through the graph too: the
  // lock is held across fork(), and the child never finds it taken by a thread that is not there. (Before, such a
  // child hung in its first call, and its alarm ended it.)
  tether::affine_executor served("served");
  std::thread server([&] { served.run(); });
  std::atomic<bool> stop{false};
  std::vector<std::thread> callers;
  for (int c = 0; c < 3; ++c)
    callers.emplace_back([&] {
      tether::affine_executor mine("caller");
      mine.poll();  // an owner now: its calls go through the graph
      while (!stop.load(std::memory_order_relaxed)) served.call([] { return 0; });
    });
  int failed = 0;
  for (int i = 0; i < 400; ++i) {
    const pid_t child = ::fork();
    if (child == 0) {
      ::alarm(5);
      tether::affine_executor fresh("fresh");
      std::thread runner([&] { fresh.run(); });
      const bool answered = fresh.call([] { return 1; }) == 1;
      fresh.stop();
      runner.join();
      ::_exit(answered ? 0 : 1);
    }
    int status = -1;
    if (child > 0) ::waitpid(child, &status, 0);
    failed += !(child > 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0);
  }
  stop.store(true, std::memory_order_relaxed);
  for (auto& c : callers) c.join();
  served.stop();
  server.join();
  CHECK(failed == 0);
}

TEST_CASE("a fork() while the main thread runs main_thread() leaves the child a usable main_thread()" *
          doctest::skip(TETHER_SANITIZED) * doctest::timeout(120)) {
  // The owner takes its inbox's lock whenever it looks for work, so a fork() from another thread often comes while
  // the main thread holds it; the child's only thread owns main_thread() then, and polls it. The lock is held across
  // fork(), so the child never finds it taken. (Before, about one child in a hundred hung in poll(), ended by its
  // alarm.)
  std::atomic<bool> done{false};
  std::atomic<int> pending{0};
  std::thread producer([&] {
    while (!done.load()) {
      if (pending.load() > 64) {
        std::this_thread::yield();  // backpressure, not synchronisation
        continue;
      }
      ++pending;
      tether::main_thread().post([&] { --pending; });
    }
  });
  int failed = 0;
  std::thread forker([&] {
    for (int i = 0; i < 400; ++i) {
      const pid_t child = ::fork();
      if (child == 0) {
        ::alarm(2);
        tether::main_thread().poll();
        ::_exit(0);
      }
      int status = -1;
      if (child > 0) ::waitpid(child, &status, 0);
      failed += !(child > 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0);
    }
    done.store(true);
    tether::main_thread().post([] {});  // the loop looks at `done` again
  });
  tether::main_thread().run_until([&] { return done.load(); });
  forker.join();
  producer.join();
  while (pending.load() != 0) tether::main_thread().poll();  // no job left that refers to this frame
  CHECK(failed == 0);
}

TEST_CASE("call from a task manager task suspends only that task's fiber, not its worker thread" *
          doctest::timeout(60)) {
  const int tasks_per_round = 8;
  for (unsigned workers : {1u, 2u}) {
    CAPTURE(workers);
    tether::affine_executor ex("fiber-target");
    CHECK(ex.poll() == 0);  // this thread owns it and runs no loop until every task waits in call()
    tether::task_manager tasks(tether::task_manager::options{.workers = workers});
    std::atomic<int> waiting{0};
    std::vector<tether::task_handle<int>> handles;
    for (int i = 0; i < tasks_per_round; ++i)
      handles.push_back(tasks.submit("caller-" + std::to_string(i), [&ex, &waiting, i] {
        ++waiting;
        return ex.call([&ex, i] { return ex.on_owner_thread() ? i : -1; });
      }));
    // With threads blocked instead of fibers, at most `workers` tasks could be waiting here; the guard below turns
    // that into a failure instead of a hang.
    const auto guard = std::chrono::steady_clock::now() + 30s;
    while (waiting < tasks_per_round && std::chrono::steady_clock::now() < guard) std::this_thread::yield();
    REQUIRE(waiting == tasks_per_round);
    std::size_t ran = 0;
    while (ran < static_cast<std::size_t>(tasks_per_round)) ran += ex.run_one();
    for (int i = 0; i < tasks_per_round; ++i) CHECK(handles[static_cast<std::size_t>(i)].get() == i);
  }
}
