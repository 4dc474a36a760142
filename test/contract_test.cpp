// SPDX-License-Identifier: BSL-1.0
// The public API checked name by name against the contract sketch in DESIGN.md ("API sketch").
#include <tether/tether.hpp>

#include <doctest/doctest.h>
#include "error_of.hpp"

#include <poll.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <future>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <type_traits>
#include <vector>

using namespace std::chrono_literals;

namespace {

using tether_test::error_of;

template <class Fn>
bool throws_cancelled(Fn&& fn) {
  try {
    fn();
  } catch (const tether::task_cancelled&) {
    return true;
  }
  return false;
}

// Blocks its OS thread (and so its worker) until the task is asked to stop; then throws task_cancelled.
void block_until_stopped(tether::task_context& task, std::promise<void>* started = nullptr) {
  if (started) started->set_value();
  std::mutex m;
  std::condition_variable_any cv;
  std::unique_lock lock(m);
  cv.wait(lock, task.stop_token(), [] { return false; });
  lock.unlock();
  task.throw_if_cancelled();
}

bool fd_readable(int fd) {
  ::pollfd p{fd, POLLIN, 0};
  return ::poll(&p, 1, 0) == 1 && (p.revents & POLLIN);
}

constexpr std::chrono::system_clock::time_point never{};

template <class T>
concept has_value_member = requires(T v) { v.value; };

}  // namespace

// ---- error.hpp ---------------------------------------------------------------------------------------------------

TEST_CASE("errc has every named value, starting at 1, in the documented order") {
  using tether::errc;
  static_assert(static_cast<int>(errc::executor_stopped) == 1);
  constexpr errc all[] = {errc::executor_stopped, errc::abandoned,       errc::timeout,
                          errc::would_deadlock,   errc::queue_full,      errc::duplicate_task,
                          errc::unknown_task,     errc::expired_task,    errc::result_type_mismatch,
                          errc::unknown_session,  errc::context_revoked, errc::invalid_argument};
  for (int i = 0; i < 12; ++i) CHECK(static_cast<int>(all[i]) == i + 1);
}

TEST_CASE("category and make_error_code make errc a std::error_code enum") {
  static_assert(std::is_same_v<decltype(tether::category()), const std::error_category&>);
  static_assert(noexcept(tether::category()));
  static_assert(std::is_same_v<decltype(tether::make_error_code(tether::errc::timeout)), std::error_code>);
  static_assert(noexcept(tether::make_error_code(tether::errc::timeout)));
  static_assert(std::is_error_code_enum_v<tether::errc>);
  const std::error_code ec = tether::make_error_code(tether::errc::timeout);
  CHECK(&ec.category() == &tether::category());
  CHECK(ec.value() == static_cast<int>(tether::errc::timeout));
  const std::error_code implicit = tether::errc::queue_full;
  CHECK(implicit == tether::errc::queue_full);
}

TEST_CASE("error is a system_error built from a code and a message, and e.code() == errc compares") {
  static_assert(std::is_base_of_v<std::system_error, tether::error>);
  static_assert(std::is_constructible_v<tether::error, tether::errc, std::string_view>);
  try {
    throw tether::error(tether::errc::timeout, "contract: timed out");
  } catch (const tether::error& e) {
    CHECK(e.code() == tether::errc::timeout);
    CHECK(e.code() != tether::errc::abandoned);
    CHECK(std::string(e.what()).find("contract: timed out") != std::string::npos);
  }
}

TEST_CASE("task_cancelled is a std::exception that a catch of tether::error does not swallow") {
  static_assert(std::is_base_of_v<std::exception, tether::task_cancelled>);
  static_assert(!std::is_base_of_v<tether::error, tether::task_cancelled>);
  static_assert(!std::is_base_of_v<std::system_error, tether::task_cancelled>);
  bool swallowed = false, seen = false;
  try {
    try {
      throw tether::task_cancelled();
    } catch (const tether::error&) {
      swallowed = true;
    }
  } catch (const tether::task_cancelled&) {
    seen = true;
  }
  CHECK_FALSE(swallowed);
  CHECK(seen);
}

// ---- context.hpp -------------------------------------------------------------------------------------------------

TEST_CASE("context_key is built explicitly from a name and an optional sensitive flag") {
  static_assert(std::is_constructible_v<tether::context_key<int>, std::string_view>);
  static_assert(std::is_constructible_v<tether::context_key<int>, std::string_view, bool>);
  static_assert(!std::is_convertible_v<std::string_view, tether::context_key<int>>);
  const tether::context_key<int> plain("contract.plain");
  const tether::context_key<int> secret("contract.secret", true);
  const tether::context ctx = tether::context().with(plain, 1).with(secret, 2);
  CHECK(*ctx.get(plain) == 1);
  CHECK(*ctx.get(secret) == 2);
}

TEST_CASE("a default-constructed context is empty: get returns nullptr, not revoked, no stop") {
  static_assert(std::is_default_constructible_v<tether::context>);
  static_assert(noexcept(tether::context::current()));
  static_assert(noexcept(std::declval<const tether::context&>().revoked()));
  static_assert(noexcept(std::declval<const tether::context&>().stop_token()));
  static_assert(std::is_same_v<decltype(std::declval<const tether::context&>().stop_token()), std::stop_token>);
  const tether::context_key<std::string> key("contract.name");
  const tether::context empty;
  static_assert(std::is_same_v<decltype(empty.get(key)), const std::string*>);
  CHECK(empty.get(key) == nullptr);
  CHECK_FALSE(empty.revoked());
  CHECK_FALSE(empty.stop_token().stop_requested());
  CHECK(tether::context::current().get(key) == nullptr);
}

TEST_CASE("with returns a new context holding the value and leaves the original unchanged") {
  const tether::context_key<std::string> key("contract.with");
  const tether::context base;
  const tether::context derived = base.with(key, "value");  // std::type_identity_t<T>: a literal becomes std::string
  static_assert(std::is_same_v<decltype(base.with(key, "x")), tether::context>);
  REQUIRE(derived.get(key) != nullptr);
  CHECK(*derived.get(key) == "value");
  CHECK(base.get(key) == nullptr);
  const tether::context shadowed = derived.with(key, "other");
  CHECK(*shadowed.get(key) == "other");
  CHECK(*derived.get(key) == "value");
}

TEST_CASE("context_scope installs a context as current and restores the previous one, and is neither copied nor moved") {
  static_assert(std::is_constructible_v<tether::context_scope, tether::context>);
  static_assert(!std::is_convertible_v<tether::context, tether::context_scope>);
  static_assert(!std::is_copy_constructible_v<tether::context_scope>);
  static_assert(!std::is_move_constructible_v<tether::context_scope>);
  static_assert(!std::is_copy_assignable_v<tether::context_scope>);
  static_assert(!std::is_move_assignable_v<tether::context_scope>);
  const tether::context_key<int> key("contract.scope");
  {
    tether::context_scope outer(tether::context().with(key, 1));
    CHECK(*tether::context::current().get(key) == 1);
    {
      tether::context_scope inner(tether::context::current().with(key, 2));
      CHECK(*tether::context::current().get(key) == 2);
    }
    CHECK(*tether::context::current().get(key) == 1);
  }
  CHECK(tether::context::current().get(key) == nullptr);
}

TEST_CASE("bind runs the function, with its arguments, under the context current at bind time") {
  const tether::context_key<int> key("contract.bind");
  std::function<int(int)> bound;
  {
    tether::context_scope scope(tether::context().with(key, 40));
    bound = tether::bind([&key](int add) {
      const int* v = tether::context::current().get(key);
      return v ? *v + add : -1;
    });
  }
  CHECK(tether::context::current().get(key) == nullptr);
  CHECK(bound(2) == 42);
  CHECK(tether::context::current().get(key) == nullptr);
}

TEST_CASE("lifetime is move-only and revokes the contexts it attached when revoked or destroyed") {
  static_assert(!std::is_copy_constructible_v<tether::lifetime>);
  static_assert(!std::is_copy_assignable_v<tether::lifetime>);
  static_assert(std::is_move_constructible_v<tether::lifetime>);
  static_assert(std::is_move_assignable_v<tether::lifetime>);
  static_assert(noexcept(std::declval<const tether::lifetime&>().revoked()));
  const tether::context_key<int> key("contract.life");

  tether::lifetime life;
  CHECK_FALSE(life.revoked());
  tether::context ctx = life.attach(tether::context().with(key, 7));
  CHECK_FALSE(ctx.revoked());
  CHECK(*ctx.get(key) == 7);
  std::stop_token token = ctx.stop_token();
  CHECK_FALSE(token.stop_requested());
  life.revoke();
  CHECK(life.revoked());
  CHECK(ctx.revoked());
  CHECK(token.stop_requested());
  CHECK(ctx.stop_token().stop_requested());
  const tether::context late = life.attach(tether::context());
  CHECK(late.revoked());

  tether::context from_current;
  {
    tether::lifetime scoped;
    tether::lifetime moved(std::move(scoped));
    {
      tether::context_scope scope(tether::context().with(key, 9));
      from_current = moved.attach();  // default base: context::current()
    }
    CHECK(*from_current.get(key) == 9);
    CHECK_FALSE(from_current.revoked());
  }
  CHECK(from_current.revoked());
}

TEST_CASE("a sensitive value read after its lifetime was revoked throws context_revoked") {
  const tether::context_key<int> secret("contract.sensitive", true);
  tether::lifetime life;
  const tether::context ctx = life.attach(tether::context().with(secret, 5));
  CHECK(*ctx.get(secret) == 5);
  life.revoke();
  CHECK(error_of([&] { (void)ctx.get(secret); }) == tether::errc::context_revoked);
}

// ---- affine_executor.hpp -----------------------------------------------------------------------------------------

TEST_CASE("affine_executor has the documented members and return types") {
  using ex = tether::affine_executor;
  static_assert(std::is_default_constructible_v<ex>);
  auto fn = [] { return 1; };
  static_assert(std::is_same_v<decltype(std::declval<ex&>().post(fn)), void>);
  static_assert(std::is_same_v<decltype(std::declval<ex&>().submit(fn)), std::future<int>>);
  static_assert(std::is_same_v<decltype(std::declval<ex&>().call(fn)), int>);
  static_assert(std::is_same_v<decltype(std::declval<ex&>().call_for(1ms, fn)), int>);
  static_assert(std::is_same_v<decltype(std::declval<ex&>().run()), std::size_t>);
  static_assert(std::is_same_v<decltype(std::declval<ex&>().run_one()), std::size_t>);
  static_assert(std::is_same_v<decltype(std::declval<ex&>().poll()), std::size_t>);
  static_assert(std::is_same_v<decltype(std::declval<ex&>().run_for(1ms)), std::size_t>);
  static_assert(std::is_same_v<decltype(std::declval<ex&>().run_until([] { return true; })), std::size_t>);
  static_assert(std::is_same_v<decltype(std::declval<ex&>().stop()), void>);
  static_assert(std::is_same_v<decltype(std::declval<ex&>().drain()), void>);
  static_assert(std::is_same_v<decltype(std::declval<const ex&>().on_owner_thread()), bool>);
  static_assert(noexcept(std::declval<const ex&>().on_owner_thread()));
  static_assert(std::is_same_v<decltype(std::declval<const ex&>().wakeup_fd()), int>);
  static_assert(noexcept(std::declval<const ex&>().wakeup_fd()));
  static_assert(std::is_same_v<decltype(std::declval<ex&>().set_error_handler(
                                   std::function<void(std::exception_ptr)>())),
                               void>);
  static_assert(std::is_same_v<decltype(tether::main_thread()), tether::affine_executor&>);
}

TEST_CASE("post, submit, poll and run_one run functions on the owner and count them") {
  tether::affine_executor ex;
  CHECK_FALSE(ex.on_owner_thread());  // strict: nobody owns it yet
  CHECK(ex.poll() == 0);              // never blocks; claims the executor
  CHECK(ex.on_owner_thread());
  int ran = 0;
  ex.post([&] { ++ran; });
  std::future<int> f = ex.submit([] { return 42; });
  CHECK(ex.run_one() == 1);
  CHECK(ran == 1);
  CHECK(ex.poll() == 1);
  CHECK(f.get() == 42);
  CHECK(ex.call([] { return 7; }) == 7);  // inline on the owner thread
  std::atomic<bool> other_owner{true};
  std::thread([&] { other_owner = ex.on_owner_thread(); }).join();
  CHECK_FALSE(other_owner.load());
}

TEST_CASE("call from another thread runs on the owner, and run_until stops when its predicate holds") {
  tether::affine_executor ex;
  std::atomic<bool> done{false};
  std::thread::id ran_on;
  int result = 0;
  std::thread caller([&] {
    result = ex.call([&] {
      ran_on = std::this_thread::get_id();
      return 5;
    });
    done = true;
    ex.post([] {});  // wakes the owner so it rechecks the predicate at once
  });
  const std::size_t ran = ex.run_until([&] { return done.load(); });
  caller.join();
  CHECK(ran >= 1);
  CHECK(result == 5);
  CHECK(ran_on == std::this_thread::get_id());
}

TEST_CASE("call_for throws errc::timeout when the owner does not start the call in time") {
  tether::affine_executor ex;  // nobody runs it
  CHECK(error_of([&] { (void)ex.call_for(1ms, [] { return 1; }); }) == tether::errc::timeout);
}

TEST_CASE("run and run_for return how many functions they ran once stop() is called") {
  tether::affine_executor a;
  a.post([] {});
  a.post([&] { a.stop(); });
  CHECK(a.run() == 2);

  tether::affine_executor b;
  b.post([] {});
  b.post([&] { b.stop(); });
  CHECK(b.run_for(10s) == 2);
}

TEST_CASE("drain runs the backlog, then stops: later posts throw executor_stopped") {
  tether::affine_executor ex;
  CHECK(ex.poll() == 0);
  int ran = 0;
  ex.post([&] { ++ran; });
  ex.post([&] { ++ran; });
  ex.drain();
  CHECK(ran == 2);
  CHECK(error_of([&] { ex.post([] {}); }) == tether::errc::executor_stopped);
}

TEST_CASE("wakeup_fd is readable while work is pending and cleared once it ran") {
  tether::affine_executor ex;
  const int fd = ex.wakeup_fd();
  REQUIRE(fd >= 0);
  CHECK(ex.poll() == 0);
  CHECK_FALSE(fd_readable(fd));
  ex.post([] {});
  CHECK(fd_readable(fd));
  CHECK(ex.poll() == 1);
  CHECK_FALSE(fd_readable(fd));
}

TEST_CASE("set_error_handler receives what escapes a posted function, and the executor goes on") {
  tether::affine_executor ex;
  std::exception_ptr seen;
  ex.set_error_handler([&](std::exception_ptr e) { seen = e; });
  int after = 0;
  ex.post([] { throw std::runtime_error("contract: escaped"); });
  ex.post([&] { ++after; });
  CHECK(ex.poll() == 2);
  REQUIRE(seen);
  CHECK_THROWS_AS(std::rethrow_exception(seen), std::runtime_error);
  CHECK(after == 1);
}

TEST_CASE("a call that would close a cycle of owners waiting on each other throws would_deadlock") {
  tether::affine_executor a, b;
  CHECK(a.poll() == 0);  // this thread owns a
  std::thread other([&] {
    (void)b.poll();                       // the other thread owns b...
    (void)a.call([] { return 1; });       // ...and blocks calling into a
  });
  ::pollfd p{a.wakeup_fd(), POLLIN, 0};
  REQUIRE(::poll(&p, 1, -1) == 1);       // the call is queued on a: its wait edge exists
  CHECK(error_of([&] { (void)b.call([] { return 2; }); }) == tether::errc::would_deadlock);
  CHECK(a.run_one() == 1);               // let the other thread's call finish
  other.join();
}

TEST_CASE("main_thread is one executor, owned by the process's main thread") {
  tether::affine_executor& m = tether::main_thread();
  CHECK(&m == &tether::main_thread());
  CHECK(m.on_owner_thread());  // doctest runs the tests on the main thread
  int ran = 0;
  m.post([&] { ++ran; });
  CHECK(m.poll() == 1);
  CHECK(ran == 1);
}

// ---- task_manager.hpp --------------------------------------------------------------------------------------------

TEST_CASE("the task manager enums have every documented value") {
  using tether::task_status, tether::task_known, tether::task_end, tether::on_duplicate, tether::cancel_outcome,
      tether::shutdown_mode;
  CHECK(static_cast<int>(task_status::queued) == 0);
  CHECK(static_cast<int>(task_status::running) == 1);
  CHECK(static_cast<int>(task_status::succeeded) == 2);
  CHECK(static_cast<int>(task_status::failed) == 3);
  CHECK(static_cast<int>(task_status::cancelled) == 4);
  CHECK(static_cast<int>(task_known::unknown) == 0);
  CHECK(static_cast<int>(task_known::live) == 1);
  CHECK(static_cast<int>(task_known::expired) == 2);
  constexpr task_end ends[] = {task_end::none,           task_end::completed, task_end::failed,
                               task_end::cancelled_by_user, task_end::replaced, task_end::group_cancelled,
                               task_end::shutdown};
  for (int i = 0; i < 7; ++i) CHECK(static_cast<int>(ends[i]) == i);
  CHECK(static_cast<int>(on_duplicate::replace) == 0);
  CHECK(static_cast<int>(on_duplicate::reject) == 1);
  constexpr cancel_outcome outcomes[] = {cancel_outcome::unknown, cancel_outcome::already_finished,
                                         cancel_outcome::removed_from_queue, cancel_outcome::stop_requested};
  for (int i = 0; i < 4; ++i) CHECK(static_cast<int>(outcomes[i]) == i);
  CHECK(static_cast<int>(shutdown_mode::drain) == 0);
  CHECK(static_cast<int>(shutdown_mode::cancel) == 1);
}

TEST_CASE("task_options, task_result, task_info and shutdown_report have the documented members") {
  const tether::task_options opts;
  static_assert(std::is_same_v<decltype(tether::task_options::group), std::string>);
  static_assert(std::is_same_v<decltype(tether::task_options::duplicate), tether::on_duplicate>);
  CHECK(opts.group.empty());
  CHECK(opts.duplicate == tether::on_duplicate::replace);

  using r = tether::task_result<int>;
  static_assert(std::is_same_v<decltype(r::id), std::string>);
  static_assert(std::is_same_v<decltype(r::status), tether::task_status>);
  static_assert(std::is_same_v<decltype(r::cancel_requested), bool>);
  static_assert(std::is_same_v<decltype(r::value), std::optional<int>>);
  static_assert(std::is_same_v<decltype(r::progress), double>);
  static_assert(std::is_same_v<decltype(r::message), std::string>);
  static_assert(std::is_same_v<decltype(r::sequence), std::uint64_t>);
  static_assert(std::is_same_v<decltype(r::error), std::exception_ptr>);
  static_assert(std::is_same_v<decltype(r::error_message), std::string>);
  static_assert(std::is_same_v<decltype(r::reason), tether::task_end>);
  static_assert(std::is_same_v<decltype(r::submitted), std::chrono::system_clock::time_point>);
  static_assert(std::is_same_v<decltype(r::started), std::chrono::system_clock::time_point>);
  static_assert(std::is_same_v<decltype(r::finished), std::chrono::system_clock::time_point>);
  static_assert(!has_value_member<tether::task_result<void>>);
  static_assert(has_value_member<tether::task_result<int>>);

  using i = tether::task_info;
  static_assert(!has_value_member<i>);
  static_assert(std::is_same_v<decltype(i::id), std::string>);
  static_assert(std::is_same_v<decltype(i::status), tether::task_status>);
  static_assert(std::is_same_v<decltype(i::cancel_requested), bool>);
  static_assert(std::is_same_v<decltype(i::progress), double>);
  static_assert(std::is_same_v<decltype(i::message), std::string>);
  static_assert(std::is_same_v<decltype(i::sequence), std::uint64_t>);
  static_assert(std::is_same_v<decltype(i::error), std::exception_ptr>);
  static_assert(std::is_same_v<decltype(i::error_message), std::string>);
  static_assert(std::is_same_v<decltype(i::reason), tether::task_end>);
  static_assert(std::is_same_v<decltype(i::submitted), std::chrono::system_clock::time_point>);
  static_assert(std::is_same_v<decltype(i::started), std::chrono::system_clock::time_point>);
  static_assert(std::is_same_v<decltype(i::finished), std::chrono::system_clock::time_point>);
  static_assert(std::is_same_v<decltype(i::group), std::string>);
  static_assert(std::is_same_v<decltype(i::known), tether::task_known>);

  using s = tether::shutdown_report;
  static_assert(std::is_same_v<decltype(s::completed), std::size_t>);
  static_assert(std::is_same_v<decltype(s::cancelled_before_start), std::size_t>);
  static_assert(std::is_same_v<decltype(s::stopped_while_running), std::size_t>);
}

TEST_CASE("task_manager::options has the documented fields and defaults, and both constructors exist") {
  const tether::task_manager::options o;
  static_assert(std::is_same_v<decltype(tether::task_manager::options::workers), unsigned>);
  static_assert(std::is_same_v<decltype(tether::task_manager::options::max_queued), std::size_t>);
  static_assert(std::is_same_v<decltype(tether::task_manager::options::max_queued_per_group), std::size_t>);
  static_assert(std::is_same_v<decltype(tether::task_manager::options::max_retained), std::size_t>);
  static_assert(std::is_same_v<decltype(tether::task_manager::options::retain_for), std::chrono::seconds>);
  CHECK(o.workers == 0u);
  CHECK(o.max_queued == 1'000'000u);
  CHECK(o.max_queued_per_group == 0u);
  CHECK(o.retain_for == 600s);
  CHECK(o.max_retained == 100'000u);
  static_assert(std::is_default_constructible_v<tether::task_manager>);
  static_assert(std::is_constructible_v<tether::task_manager, tether::task_manager::options>);
  static_assert(!std::is_convertible_v<tether::task_manager::options, tether::task_manager>);

  tether::task_manager tasks({.workers = 1});
  CHECK(tasks.submit("one", [] { return 1; }).get() == 1);
  tether::task_manager defaulted;
  CHECK(defaulted.submit("two", [] { return 2; }).get() == 2);
}

TEST_CASE("task_context, task_handle and task_manager members have the documented signatures") {
  using ctx = tether::task_context;
  static_assert(std::is_same_v<decltype(std::declval<const ctx&>().id()), const std::string&>);
  static_assert(noexcept(std::declval<const ctx&>().id()));
  static_assert(std::is_same_v<decltype(std::declval<const ctx&>().stop_token()), std::stop_token>);
  static_assert(noexcept(std::declval<const ctx&>().stop_token()));
  static_assert(std::is_same_v<decltype(std::declval<const ctx&>().stop_requested()), bool>);
  static_assert(noexcept(std::declval<const ctx&>().stop_requested()));
  static_assert(std::is_same_v<decltype(std::declval<const ctx&>().throw_if_cancelled()), void>);
  static_assert(std::is_same_v<decltype(std::declval<ctx&>().publish(1)), void>);
  static_assert(std::is_same_v<decltype(std::declval<ctx&>().progress(0.5)), void>);
  static_assert(std::is_same_v<decltype(std::declval<ctx&>().progress(0.5, "m")), void>);

  using h = tether::task_handle<int>;
  static_assert(std::is_same_v<decltype(std::declval<h&>().get()), int>);
  static_assert(std::is_same_v<decltype(std::declval<h&>().wait()), void>);
  static_assert(std::is_same_v<decltype(std::declval<h&>().wait_for(1ms)), tether::task_status>);
  static_assert(std::is_same_v<decltype(std::declval<h&>().cancel()), tether::cancel_outcome>);
  static_assert(std::is_same_v<decltype(std::declval<const h&>().id()), const std::string&>);

  using tm = tether::task_manager;
  static_assert(std::is_same_v<decltype(std::declval<tm&>().submit("x", [] { return 1; })), h>);
  static_assert(std::is_same_v<decltype(std::declval<tm&>().submit("x", [](ctx&) {}, tether::task_options{})),
                               tether::task_handle<void>>);
  static_assert(std::is_same_v<decltype(std::declval<const tm&>().get_result<int>("x")),
                               std::optional<tether::task_result<int>>>);
  static_assert(std::is_same_v<decltype(std::declval<const tm&>().info("x")), tether::task_info>);
  static_assert(std::is_same_v<decltype(std::declval<const tm&>().list()), std::vector<tether::task_info>>);
  static_assert(std::is_same_v<decltype(std::declval<const tm&>().list("g")), std::vector<tether::task_info>>);
  static_assert(std::is_same_v<decltype(std::declval<tm&>().cancel("x")), tether::cancel_outcome>);
  static_assert(std::is_same_v<decltype(std::declval<tm&>().cancel_group("g")), std::size_t>);
  static_assert(std::is_same_v<decltype(std::declval<tm&>().cancel_all()), std::size_t>);
  static_assert(std::is_same_v<decltype(std::declval<tm&>().wait("x", 1ms)), tether::task_status>);
  static_assert(std::is_same_v<decltype(std::declval<tm&>().shutdown()), tether::shutdown_report>);
  static_assert(std::is_same_v<decltype(std::declval<tm&>().shutdown(tether::shutdown_mode::cancel)),
                               tether::shutdown_report>);
}

TEST_CASE("a task that returns succeeds, and get_result shows its value, progress, sequence and timestamps") {
  tether::task_manager tasks({.workers = 1});
  auto handle = tasks.submit(
      "sum",
      [](tether::task_context& task) {
        CHECK(task.id() == "sum");
        CHECK_FALSE(task.stop_requested());
        CHECK_FALSE(task.stop_token().stop_requested());
        task.throw_if_cancelled();  // does nothing: no cancel was requested
        task.publish(1);
        task.progress(0.5, "half");
        return 3;
      },
      {.group = "g1"});
  CHECK(handle.id() == "sum");
  CHECK(handle.get() == 3);
  handle.wait();
  CHECK(handle.wait_for(0ms) == tether::task_status::succeeded);
  CHECK(tasks.wait("sum", 0ms) == tether::task_status::succeeded);

  const auto r = tasks.get_result<int>("sum");
  REQUIRE(r.has_value());
  CHECK(r->id == "sum");
  CHECK(r->status == tether::task_status::succeeded);
  CHECK_FALSE(r->cancel_requested);
  REQUIRE(r->value.has_value());
  CHECK(*r->value == 3);
  CHECK(r->progress == doctest::Approx(0.5));
  CHECK(r->message == "half");
  CHECK(r->sequence >= 2);  // one publish, one progress
  CHECK_FALSE(r->error);
  CHECK(r->error_message.empty());
  CHECK(r->reason == tether::task_end::completed);
  CHECK(r->submitted != never);
  CHECK(r->started != never);
  CHECK(r->finished != never);
  CHECK(r->submitted <= r->started);
  CHECK(r->started <= r->finished);

  const tether::task_info i = tasks.info("sum");
  CHECK(i.known == tether::task_known::live);
  CHECK(i.group == "g1");
  CHECK(i.id == "sum");
  CHECK(i.status == tether::task_status::succeeded);
  CHECK(tasks.info("never-submitted").known == tether::task_known::unknown);
  CHECK_FALSE(tasks.get_result<int>("never-submitted").has_value());
  CHECK(error_of([&] { (void)tasks.wait("never-submitted", 0ms); }) == tether::errc::unknown_task);
  CHECK(tasks.cancel("never-submitted") == tether::cancel_outcome::unknown);
  CHECK(tasks.cancel("sum") == tether::cancel_outcome::already_finished);
  CHECK(handle.cancel() == tether::cancel_outcome::already_finished);

  auto none = tasks.submit("void", [] {}, {.group = "g2"});
  none.get();
  const auto v = tasks.get_result<void>("void");
  REQUIRE(v.has_value());
  CHECK(v->status == tether::task_status::succeeded);
  CHECK(tasks.list("g1").size() == 1);
  CHECK(tasks.list("g2").size() == 1);
  CHECK(tasks.list().size() == 2);
}

TEST_CASE("publish converts a string literal to a std::string result and a number to an arithmetic result") {
  tether::task_manager tasks({.workers = 1});
  std::promise<void> go;
  std::shared_future<void> gate = go.get_future().share();
  std::promise<void> published;
  auto text = tasks.submit("text", [&](tether::task_context& task) {
    task.publish("literal");
    published.set_value();
    gate.wait();
    return std::string("final");
  });
  published.get_future().wait();
  const auto mid = tasks.get_result<std::string>("text");
  REQUIRE(mid.has_value());
  CHECK(mid->status == tether::task_status::running);
  REQUIRE(mid->value.has_value());
  CHECK(*mid->value == "literal");  // the intermediate value
  go.set_value();
  CHECK(text.get() == "final");
  CHECK(*tasks.get_result<std::string>("text")->value == "final");

  auto number = tasks.submit("number", [](tether::task_context& task) {
    task.publish(2);  // an int for a double result
    return 0.0;
  });
  CHECK(number.get() == 0.0);
}

TEST_CASE("a task that throws fails; get rethrows, and the result carries the error and its text") {
  tether::task_manager tasks({.workers = 1});
  auto handle = tasks.submit("boom", []() -> int { throw std::runtime_error("contract: boom"); });
  CHECK_THROWS_AS((void)handle.get(), std::runtime_error);
  const auto r = tasks.get_result<int>("boom");
  REQUIRE(r.has_value());
  CHECK(r->status == tether::task_status::failed);
  CHECK(r->reason == tether::task_end::failed);
  CHECK(r->error);
  CHECK(r->error_message.find("contract: boom") != std::string::npos);
  CHECK_FALSE(r->value.has_value());
  CHECK(error_of([&] { (void)tasks.get_result<std::string>("boom"); }) == tether::errc::result_type_mismatch);
}

TEST_CASE("cancel removes a queued task at once and asks a running one to stop") {
  tether::task_manager tasks({.workers = 1});
  std::promise<void> started;
  auto running = tasks.submit("running", [&](tether::task_context& task) { block_until_stopped(task, &started); });
  started.get_future().wait();
  auto queued = tasks.submit("queued", [] { return 1; });
  CHECK(tasks.info("queued").status == tether::task_status::queued);
  CHECK(tasks.cancel("queued") == tether::cancel_outcome::removed_from_queue);
  CHECK(tasks.info("queued").status == tether::task_status::cancelled);
  CHECK(throws_cancelled([&] { (void)queued.get(); }));
  const auto q = tasks.get_result<int>("queued");
  REQUIRE(q.has_value());
  CHECK(q->started == never);  // it never started
  CHECK(q->reason == tether::task_end::cancelled_by_user);

  CHECK(running.cancel() == tether::cancel_outcome::stop_requested);
  CHECK(throws_cancelled([&] { running.get(); }));
  const tether::task_info r = tasks.info("running");
  CHECK(r.status == tether::task_status::cancelled);
  CHECK(r.cancel_requested);
  CHECK(r.reason == tether::task_end::cancelled_by_user);
}

TEST_CASE("this_task::sleep_for in a task wakes early and throws task_cancelled when the task is cancelled") {
  tether::task_manager tasks({.workers = 1});
  std::promise<void> started;
  auto sleeper = tasks.submit("sleeper", [&] {
    started.set_value();
    tether::this_task::sleep_for(1h);
  });
  started.get_future().wait();
  CHECK(tasks.cancel("sleeper") == tether::cancel_outcome::stop_requested);
  CHECK(throws_cancelled([&] { sleeper.get(); }));
  CHECK(tasks.info("sleeper").status == tether::task_status::cancelled);
}

TEST_CASE("publish throws task_cancelled once cancel was requested") {
  tether::task_manager tasks({.workers = 1});
  std::promise<void> started;
  std::promise<void> go;
  auto handle = tasks.submit("pub", [&](tether::task_context& task) {
    started.set_value();
    go.get_future().wait();
    task.publish(1);  // throws: cancel was requested meanwhile
    return 2;
  });
  started.get_future().wait();
  CHECK(handle.cancel() == tether::cancel_outcome::stop_requested);
  go.set_value();
  CHECK(throws_cancelled([&] { (void)handle.get(); }));
  CHECK(tasks.info("pub").status == tether::task_status::cancelled);
}

TEST_CASE("this_task::sleep_for and yield outside a task are a plain sleep and a plain yield") {
  tether::this_task::sleep_for(0ms);
  tether::this_task::yield();
  CHECK(true);
}

TEST_CASE("this_task::yield inside a task lets the task go on") {
  tether::task_manager tasks({.workers = 1});
  auto handle = tasks.submit("yielder", [] {
    tether::this_task::yield();
    return 1;
  });
  CHECK(handle.get() == 1);
}

TEST_CASE("on_duplicate::reject throws duplicate_task; replace cancels the live task and queues the new one") {
  tether::task_manager tasks({.workers = 1});
  std::promise<void> started;
  auto first = tasks.submit("dup", [&](tether::task_context& task) {
    block_until_stopped(task, &started);
    return 1;
  });
  started.get_future().wait();
  CHECK(error_of([&] { (void)tasks.submit("dup", [] { return 2; }, {.duplicate = tether::on_duplicate::reject}); }) ==
        tether::errc::duplicate_task);
  auto second = tasks.submit("dup", [] { return 3; }, {.duplicate = tether::on_duplicate::replace});
  CHECK(throws_cancelled([&] { (void)first.get(); }));
  CHECK(second.get() == 3);
  CHECK(*tasks.get_result<int>("dup")->value == 3);
}

TEST_CASE("cancel_group and cancel_all return how many tasks they cancelled, with the matching reason") {
  tether::task_manager tasks({.workers = 1});
  std::promise<void> started;
  auto blocker = tasks.submit("blocker", [&](tether::task_context& task) { block_until_stopped(task, &started); },
                              {.group = "b"});
  started.get_future().wait();
  auto a = tasks.submit("a", [] {}, {.group = "g"});
  auto b = tasks.submit("b", [] {}, {.group = "g"});
  auto c = tasks.submit("c", [] {}, {.group = "h"});
  CHECK(tasks.cancel_group("g") == 2);
  CHECK(tasks.info("a").reason == tether::task_end::group_cancelled);
  CHECK(tasks.info("b").status == tether::task_status::cancelled);
  CHECK(tasks.cancel_all() == 2);  // c (queued) and the blocker (running)
  CHECK(throws_cancelled([&] { blocker.get(); }));
  CHECK(throws_cancelled([&] { c.get(); }));
  CHECK(tasks.info("c").reason == tether::task_end::cancelled_by_user);
}

TEST_CASE("max_queued and max_queued_per_group make submit throw queue_full") {
  tether::task_manager tasks({.workers = 1, .max_queued = 2, .max_queued_per_group = 1});
  std::promise<void> started;
  auto blocker = tasks.submit("blocker", [&](tether::task_context& task) { block_until_stopped(task, &started); });
  started.get_future().wait();  // running, so no longer queued
  auto a = tasks.submit("a", [] {}, {.group = "g"});
  CHECK(error_of([&] { (void)tasks.submit("b", [] {}, {.group = "g"}); }) == tether::errc::queue_full);
  auto c = tasks.submit("c", [] {}, {.group = "h"});
  CHECK(error_of([&] { (void)tasks.submit("d", [] {}, {.group = "k"}); }) == tether::errc::queue_full);
  CHECK(tasks.cancel_all() == 3);
}

TEST_CASE("max_retained evicts the oldest finished result: its id reads expired") {
  tether::task_manager tasks({.workers = 1, .max_retained = 1});
  tasks.submit("old", [] { return 1; }).get();
  tasks.submit("new", [] { return 2; }).get();
  CHECK(tasks.info("old").known == tether::task_known::expired);
  CHECK_FALSE(tasks.get_result<int>("old").has_value());
  CHECK(error_of([&] { (void)tasks.wait("old", 0ms); }) == tether::errc::expired_task);
  CHECK(tasks.info("new").known == tether::task_known::live);
}

TEST_CASE("retain_for of zero evicts finished results at once") {
  tether::task_manager tasks({.workers = 1, .retain_for = 0s});
  tasks.submit("gone", [] { return 1; }).get();
  tasks.submit("next", [] { return 2; }).get();  // retention is enforced as tasks finish
  CHECK_FALSE(tasks.get_result<int>("gone").has_value());
  CHECK(tasks.info("gone").known != tether::task_known::live);
}

TEST_CASE("shutdown(cancel) reports tasks cancelled before start and stopped while running") {
  tether::task_manager tasks({.workers = 1});
  std::promise<void> started;
  auto blocker = tasks.submit("blocker", [&](tether::task_context& task) { block_until_stopped(task, &started); });
  started.get_future().wait();
  auto a = tasks.submit("a", [] {});
  auto b = tasks.submit("b", [] {});
  const tether::shutdown_report report = tasks.shutdown(tether::shutdown_mode::cancel);
  // The queued tasks leave the queue before the running one is asked to stop: the freed worker never starts them.
  CHECK(report.completed == 0);
  CHECK(report.cancelled_before_start == 2);
  CHECK(report.stopped_while_running == 1);
  CHECK(tasks.info("blocker").reason == tether::task_end::shutdown);
  for (const char* id : {"a", "b"}) {
    CHECK(tasks.info(id).status == tether::task_status::cancelled);
    CHECK(tasks.info(id).reason == tether::task_end::shutdown);
  }
  CHECK(error_of([&] { (void)tasks.submit("late", [] {}); }) == tether::errc::executor_stopped);
}

TEST_CASE("shutdown(drain), the default, runs queued and running tasks to their end") {
  tether::task_manager tasks({.workers = 1});
  std::promise<void> started;
  std::promise<void> go;
  std::shared_future<void> gate = go.get_future().share();
  auto blocker = tasks.submit("blocker", [&] {
    started.set_value();
    gate.wait();
    return 1;
  });
  started.get_future().wait();
  auto queued = tasks.submit("queued", [] { return 2; });
  auto probe = tasks.submit("probe", [] { return 3; });
  std::thread releaser([&] {
    // The probe id stays queued behind the blocker, so resubmitting it says duplicate_task until shutdown() has
    // begun, and executor_stopped after: then the blocker may finish.
    while (error_of([&] {
             (void)tasks.submit("probe", [] { return 3; }, {.duplicate = tether::on_duplicate::reject});
           }) != tether::errc::executor_stopped)
      std::this_thread::yield();
    go.set_value();
  });
  const tether::shutdown_report report = tasks.shutdown();
  releaser.join();
  CHECK(report.completed == 3);  // blocker, queued, probe
  CHECK(report.cancelled_before_start == 0);
  CHECK(report.stopped_while_running == 0);
  CHECK(blocker.get() == 1);
  CHECK(queued.get() == 2);
  CHECK(probe.get() == 3);
  CHECK(tasks.shutdown().completed == 3);  // later calls return the first report
}

// ---- session_manager.hpp -----------------------------------------------------------------------------------------

namespace {

// What a session's callbacks saw, guarded for the manager thread.
struct recorder {
  std::mutex m;
  int starts = 0, heartbeats = 0, ends = 0;
  std::vector<tether::end_reason> reasons;
  bool revoked_in_on_end = true;
  std::optional<tether::session_state> state_in_on_end;
  tether::context ctx_in_on_end;
  bool start_before_heartbeat = true;

  tether::session_callbacks callbacks(tether::session_manager* sm = nullptr) {
    return {
        .on_start = [this](const tether::session_info&) {
          std::lock_guard l(m);
          ++starts;
        },
        .on_heartbeat = [this](const tether::session_info&) {
          std::lock_guard l(m);
          if (starts == 0) start_before_heartbeat = false;
          ++heartbeats;
        },
        .on_end = [this, sm](const tether::session_info& s, tether::end_reason r) {
          std::lock_guard l(m);
          ++ends;
          reasons.push_back(r);
          revoked_in_on_end = s.ctx.revoked();
          ctx_in_on_end = s.ctx;
          if (sm) state_in_on_end = sm->state(s.id);
        },
    };
  }
  int get(int recorder::*field) {
    std::lock_guard l(m);
    return this->*field;
  }
};

}  // namespace

TEST_CASE("the session enums, session_info, session_callbacks and options have the documented members") {
  using tether::end_reason, tether::session_state;
  CHECK(static_cast<int>(end_reason::closed) == 0);
  CHECK(static_cast<int>(end_reason::expired) == 1);
  CHECK(static_cast<int>(end_reason::probe_failed) == 2);
  CHECK(static_cast<int>(end_reason::shutdown) == 3);
  CHECK(static_cast<int>(session_state::active) == 0);
  CHECK(static_cast<int>(session_state::disconnected) == 1);
  CHECK(static_cast<int>(session_state::ended) == 2);

  using si = tether::session_info;
  static_assert(std::is_same_v<decltype(si::id), std::string>);
  static_assert(std::is_same_v<decltype(si::ctx), tether::context>);
  static_assert(std::is_same_v<decltype(si::opened), std::chrono::steady_clock::time_point>);
  static_assert(std::is_same_v<decltype(si::last_touch), std::chrono::steady_clock::time_point>);
  using sc = tether::session_callbacks;
  static_assert(std::is_same_v<decltype(sc::on_start), std::function<void(const si&)>>);
  static_assert(std::is_same_v<decltype(sc::on_heartbeat), std::function<void(const si&)>>);
  static_assert(std::is_same_v<decltype(sc::on_end), std::function<void(const si&, tether::end_reason)>>);

  const tether::session_manager::options o;
  using so = tether::session_manager::options;
  static_assert(std::is_same_v<decltype(so::heartbeat_interval), std::chrono::milliseconds>);
  static_assert(std::is_same_v<decltype(so::timeout), std::chrono::milliseconds>);
  static_assert(std::is_same_v<decltype(so::grace), std::chrono::milliseconds>);
  static_assert(std::is_same_v<decltype(so::deliver_on), tether::affine_executor*>);
  static_assert(std::is_same_v<decltype(so::clock), tether::manual_clock*>);
  CHECK(o.heartbeat_interval == 2000ms);
  CHECK(o.timeout == 6000ms);
  CHECK(o.grace == 0ms);
  CHECK(o.deliver_on == nullptr);
  CHECK(o.clock == nullptr);

  using sm = tether::session_manager;
  static_assert(std::is_default_constructible_v<sm>);
  static_assert(std::is_constructible_v<sm, sm::options>);
  static_assert(!std::is_convertible_v<sm::options, sm>);
  const sm defaulted;
  CHECK(defaulted.active() == 0);
  static_assert(std::is_same_v<decltype(std::declval<sm&>().open(sc{})), std::string>);
  static_assert(std::is_same_v<decltype(std::declval<sm&>().open(sc{}, "id")), std::string>);
  static_assert(std::is_same_v<decltype(std::declval<sm&>().touch("id")), void>);
  static_assert(std::is_same_v<decltype(std::declval<sm&>().close("id")), bool>);
  static_assert(std::is_same_v<decltype(std::declval<const sm&>().state("id")), tether::session_state>);
  static_assert(std::is_same_v<decltype(std::declval<sm&>().set_probe([](std::string_view) { return true; })), void>);
  static_assert(std::is_same_v<decltype(std::declval<sm&>().on_first_session([] {})), void>);
  static_assert(std::is_same_v<decltype(std::declval<sm&>().on_idle([] {})), void>);
  static_assert(std::is_same_v<decltype(std::declval<const sm&>().active()), std::size_t>);
  static_assert(std::is_same_v<decltype(std::declval<const sm&>().context_of("id")), tether::context>);
}

TEST_CASE("manual_clock::advance takes milliseconds and moves now() forward") {
  tether::manual_clock clock;
  static_assert(std::is_invocable_v<decltype(&tether::manual_clock::advance), tether::manual_clock&,
                                    std::chrono::milliseconds>);
  const auto before = clock.now();
  clock.advance(std::chrono::milliseconds(1500));
  CHECK(clock.now() - before == 1500ms);
}

TEST_CASE("a session starts, heartbeats while active, and ends once when closed; its context is revoked after on_end") {
  tether::manual_clock clock;
  tether::session_manager sessions({.heartbeat_interval = 1000ms, .timeout = 10'000ms, .clock = &clock});
  recorder rec;
  const std::string id = sessions.open(rec.callbacks(&sessions));
  CHECK_FALSE(id.empty());
  const tether::context ctx = sessions.context_of(id);
  CHECK_FALSE(ctx.revoked());
  CHECK(sessions.state(id) == tether::session_state::active);
  CHECK(sessions.active() == 1);
  clock.advance(1000ms);
  CHECK(rec.get(&recorder::starts) == 1);
  CHECK(rec.get(&recorder::heartbeats) == 1);
  clock.advance(1000ms);
  CHECK(rec.get(&recorder::heartbeats) == 2);
  sessions.touch(id);
  CHECK(sessions.close(id));
  CHECK_FALSE(sessions.close(id));  // already ended
  clock.advance(0ms);               // waits until the manager has handled the end
  CHECK(rec.get(&recorder::ends) == 1);
  std::lock_guard l(rec.m);
  CHECK(rec.start_before_heartbeat);
  REQUIRE(rec.reasons.size() == 1);
  CHECK(rec.reasons[0] == tether::end_reason::closed);
  CHECK_FALSE(rec.revoked_in_on_end);  // revoked right after on_end returns...
  CHECK(rec.state_in_on_end == tether::session_state::ended);
  CHECK(ctx.revoked());                // ...and by now it has
  CHECK(rec.ctx_in_on_end.revoked());
  CHECK(sessions.active() == 0);
}

TEST_CASE("named ids: an id in use throws invalid_argument; unknown ids throw unknown_session") {
  tether::manual_clock clock;
  tether::session_manager sessions({.clock = &clock});
  CHECK(sessions.open({}, "client-1") == "client-1");
  CHECK(error_of([&] { (void)sessions.open({}, "client-1"); }) == tether::errc::invalid_argument);
  CHECK(error_of([&] { sessions.touch("nobody"); }) == tether::errc::unknown_session);
  CHECK(error_of([&] { (void)sessions.state("nobody"); }) == tether::errc::unknown_session);
  CHECK(error_of([&] { (void)sessions.context_of("nobody"); }) == tether::errc::unknown_session);
  CHECK_FALSE(sessions.close("nobody"));
}

TEST_CASE("no touch for timeout disconnects a session; a touch within grace resumes it; after grace it expires") {
  tether::manual_clock clock;
  tether::session_manager sessions(
      {.heartbeat_interval = 1000ms, .timeout = 2000ms, .grace = 2000ms, .clock = &clock});
  recorder rec;
  const std::string id = sessions.open(rec.callbacks());
  clock.advance(2000ms);
  CHECK(sessions.state(id) == tether::session_state::disconnected);
  CHECK(sessions.active() == 1);  // still counted
  const int beats = rec.get(&recorder::heartbeats);
  clock.advance(1000ms);
  CHECK(rec.get(&recorder::heartbeats) == beats);  // no heartbeats while disconnected
  sessions.touch(id);
  CHECK(sessions.state(id) == tether::session_state::active);
  CHECK(rec.get(&recorder::ends) == 0);
  clock.advance(2000ms);  // disconnected again
  clock.advance(2000ms);  // grace over
  CHECK(rec.get(&recorder::ends) == 1);
  std::lock_guard l(rec.m);
  REQUIRE(rec.reasons.size() == 1);
  CHECK(rec.reasons[0] == tether::end_reason::expired);
}

TEST_CASE("a probe that returns false ends the session with probe_failed") {
  tether::manual_clock clock;
  tether::session_manager sessions({.heartbeat_interval = 1000ms, .timeout = 10'000ms, .clock = &clock});
  std::atomic<int> asked{0};
  sessions.set_probe([&](std::string_view) {
    ++asked;
    return false;
  });
  recorder rec;
  (void)sessions.open(rec.callbacks());
  clock.advance(1000ms);
  CHECK(asked.load() == 1);
  CHECK(rec.get(&recorder::ends) == 1);
  std::lock_guard l(rec.m);
  REQUIRE(rec.reasons.size() == 1);
  CHECK(rec.reasons[0] == tether::end_reason::probe_failed);
}

TEST_CASE("on_first_session and on_idle fire on 0 to 1 and after the last end; destruction ends with shutdown") {
  tether::manual_clock clock;
  recorder rec;
  std::atomic<int> first{0}, idle{0};
  {
    tether::session_manager sessions({.clock = &clock});
    sessions.on_first_session([&] { ++first; });
    sessions.on_idle([&] { ++idle; });
    const std::string a = sessions.open({});
    const std::string b = sessions.open({});
    clock.advance(0ms);
    CHECK(first.load() == 1);
    CHECK(sessions.close(a));
    clock.advance(0ms);
    CHECK(idle.load() == 0);
    CHECK(sessions.close(b));
    clock.advance(0ms);
    CHECK(idle.load() == 1);
    (void)sessions.open(rec.callbacks());
    clock.advance(0ms);
    CHECK(first.load() == 2);
  }
  CHECK(rec.get(&recorder::ends) == 1);
  std::lock_guard l(rec.m);
  REQUIRE(rec.reasons.size() == 1);
  CHECK(rec.reasons[0] == tether::end_reason::shutdown);
}

TEST_CASE("deliver_on runs the callbacks on the named executor, with the session's context installed") {
  tether::affine_executor ex;
  CHECK(ex.poll() == 0);  // this thread owns it
  tether::manual_clock clock;
  tether::session_manager sessions({.deliver_on = &ex, .clock = &clock});
  std::atomic<bool> on_owner{false};
  bool ctx_installed = false;
  const std::string id = sessions.open({.on_start = [&](const tether::session_info& s) {
    on_owner = ex.on_owner_thread();
    ctx_installed = !tether::context::current().revoked() && !s.ctx.revoked();
  }});
  clock.advance(0ms);  // handed to the executor
  CHECK(ex.poll() >= 1);
  CHECK(on_owner.load());
  CHECK(ctx_installed);
  CHECK(sessions.close(id));
}

TEST_CASE("cancel_tasks_on_end cancels the task group named by the session id when the session ends") {
  tether::task_manager tasks({.workers = 1});
  tether::manual_clock clock;
  tether::session_manager sessions({.clock = &clock});
  auto wiring = tether::cancel_tasks_on_end(sessions, tasks);
  const std::string id = sessions.open({});
  std::promise<void> started;
  auto handle = tasks.submit("work", [&](tether::task_context& task) { block_until_stopped(task, &started); },
                             {.group = id});
  started.get_future().wait();
  CHECK(sessions.close(id));
  clock.advance(0ms);
  CHECK(throws_cancelled([&] { handle.get(); }));
  CHECK(tasks.info("work").reason == tether::task_end::group_cancelled);
}
