// SPDX-License-Identifier: BSL-1.0
// Uses tether the way an application would; built as a Meson subproject consumer and through pkg-config.
#include <tether/tether.hpp>

#include <cstdio>

int main() {
#if TETHER_HEADER_ONLY
  const char* mode = "header-only";
#else
  const char* mode = "compiled";
#endif
  const tether::error e(tether::errc::timeout, "tether::consumer: demo");
  const bool ok = e.code() == tether::errc::timeout;
  std::printf("consumer (%s): %s\n", mode, ok ? "ok" : "FAILED");
  return ok ? 0 : 1;
}
