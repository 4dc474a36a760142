// SPDX-License-Identifier: BSL-1.0
// CPython on the main thread: main initialises the interpreter and runs tether::main_thread(); eight session threads
// evaluate Python expressions through main_thread().call(), values and Python errors alike come back to them.
// `--unsafe` lets the session threads call the interpreter directly instead, which is what the executor prevents.
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <tether/affine_executor.hpp>

#include <fmt/format.h>

#include <atomic>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace {

const tether::context_key<std::string> session_key("session");

/// What evaluate() saw, counted on the main thread only (it runs nowhere else).
struct main_thread_stats {
  int evaluations = 0;
  int off_main = 0;  ///< evaluations that ran on another thread: must stay 0 unless --unsafe
};
main_thread_stats stats;

/// The pending Python exception as text ("ZeroDivisionError: division by zero"); clears it.
std::string python_error() {
  PyObject *type = nullptr, *value = nullptr, *trace = nullptr;
  PyErr_Fetch(&type, &value, &trace);
  PyErr_NormalizeException(&type, &value, &trace);
  std::string text = "unknown Python error";
  if (type && value) {
    PyObject* name = PyObject_GetAttrString(type, "__name__");
    PyObject* message = PyObject_Str(value);
    if (name && message) text = fmt::format("{}: {}", PyUnicode_AsUTF8(name), PyUnicode_AsUTF8(message));
    Py_XDECREF(name);
    Py_XDECREF(message);
  }
  Py_XDECREF(type);
  Py_XDECREF(value);
  Py_XDECREF(trace);
  return text;
}

/// Evaluates one expression in __main__'s namespace and returns str(result); a Python error becomes a
/// std::runtime_error. Only the interpreter's thread may call this.
std::string evaluate(const std::string& expression) {
  ++stats.evaluations;
  if (!tether::main_thread().on_owner_thread()) ++stats.off_main;
  PyObject* globals = PyModule_GetDict(PyImport_AddModule("__main__"));  // borrowed references
  PyObject* result = PyRun_String(expression.c_str(), Py_eval_input, globals, globals);
  if (!result) throw std::runtime_error(python_error());
  PyObject* text = PyObject_Str(result);
  Py_DECREF(result);
  if (!text) throw std::runtime_error(python_error());
  std::string out = PyUnicode_AsUTF8(text);
  Py_DECREF(text);
  return out;
}

/// The expressions session `s` asks for; the last one fails on purpose for session 0.
std::vector<std::string> expressions_for(int s) {
  std::vector<std::string> list = {
      fmt::format("sum(range({}))", 1000 * (s + 1)),
      fmt::format("2 ** (60 + {})", s),
      fmt::format("'-'.join(str(i * {}) for i in range(4))", s + 1),
      "__import__('threading').current_thread() is __import__('threading').main_thread()",
  };
  list.push_back(s == 0 ? "1 / 0" : fmt::format("len('{}' * {})", "session", s));
  return list;
}

struct outcome {
  std::string text;
  bool failed = false;
};

/// One session thread: evaluates its expressions in order and keeps the answers.
void run_session(int s, bool unsafe, std::vector<outcome>& answers, std::atomic<int>& finished) {
  tether::context_scope as_session(tether::context{}.with(session_key, fmt::format("session-{}", s)));
  for (const std::string& expression : expressions_for(s)) {
    try {
      if (unsafe) {
        answers.push_back({evaluate(expression)});  // no GIL, not the interpreter's thread: undefined behaviour
      } else {
        answers.push_back({tether::main_thread().call([&expression] {
          // Runs on main, under the session's context: the interpreter knows whom it serves.
          const std::string* who = tether::context::current().get(session_key);
          return evaluate(expression) + (who ? "" : " (no session context!)");
        })});
      }
    } catch (const std::exception& e) {
      answers.push_back({e.what(), true});
    }
  }
  ++finished;
  if (!unsafe) tether::main_thread().post([] {});  // wakes run_until to look at `finished`
}

}  // namespace

int main(int argc, char** argv) {
  const bool unsafe = argc > 1 && std::string_view(argv[1]) == "--unsafe";
  constexpr int sessions = 8;
  Py_InitializeEx(0);  // on main, which holds the GIL from here on and is the only thread that uses Python

  std::atomic<int> finished{0};
  std::vector<std::vector<outcome>> answers(sessions);
  std::vector<std::thread> threads;
  for (int s = 0; s < sessions; ++s)
    threads.emplace_back(run_session, s, unsafe, std::ref(answers[static_cast<std::size_t>(s)]), std::ref(finished));
  if (!unsafe) tether::main_thread().run_until([&] { return finished.load() == sessions; });
  for (auto& t : threads) t.join();

  int values = 0, errors = 0, on_main = 0;
  for (int s = 0; s < sessions; ++s) {
    const auto expressions = expressions_for(s);
    for (std::size_t i = 0; i < expressions.size(); ++i) {
      const outcome& o = answers[static_cast<std::size_t>(s)][i];
      (o.failed ? errors : values) += 1;
      if (i == 3 && o.text == "True") ++on_main;  // Python's own view: evaluated on the main thread
      fmt::print("session-{}: {} -> {}{}\n", s, expressions[i], o.failed ? "raised " : "", o.text);
    }
  }
  Py_FinalizeEx();
  // Expected: 40 evaluations, all on main, 39 values and the one ZeroDivisionError of session 0.
  const bool ok = stats.evaluations == sessions * 5 && stats.off_main == 0 && on_main == sessions && values == 39 &&
                  errors == 1;
  fmt::print("cpython_main_thread: {} sessions, {} evaluations, {} off the main thread, {} values, {} errors: {}\n",
             sessions, stats.evaluations, stats.off_main, values, errors, ok ? "ok" : "FAILED");
  return ok ? 0 : 1;
}
